"""The GPU benchmark script (benchmarks/gpu_issue12.sh) runs end to end: the same cases at tiny shapes on a CPU,
from the working tree with nothing installed and without the packages the GPU machine lacks."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ABSENT = ("grain", "ml_collections", "tensorflow_datasets", "tensorflow")  # not on the GPU machine's image


@pytest.mark.slow
def test_gpu_benchmark_script_runs_every_case_without_the_data_packages(tmp_path):
  hide = tmp_path / "hide"
  for name in ABSENT:
    (hide / name).mkdir(parents=True)
    (hide / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
  out = tmp_path / "out"
  out.mkdir()
  # The interpreter's own directory first, so the script's `python` is this one; no editable install is seen
  # from the working tree's copy because PYTHONPATH puts the hidden packages and the repo root in front.
  env = {**os.environ, "OUT": str(out), "ISSUE12_SMOKE": "1", "PYTHONPATH": str(hide),
         "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
  env.pop("XLA_FLAGS", None)  # one CPU device, as the script's one GPU
  subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_issue12.sh")], cwd=tmp_path, env=env, check=True,
                 capture_output=True, timeout=900)
  log = (out / "issue12_gpu.log").read_text()
  cases = re.findall(r"^=== python benchmarks/(\S+) (.*)$", log, re.M)
  exits = re.findall(r"^=== exit (\d+)", log, re.M)
  assert [c[0] for c in cases] == ["attention_check.py"] + ["train_step.py"] * 4 and exits == ["0"] * 5, log
  assert "attention 'cudnn' runs 'cudnn' against 'xla'" in log and "9 of 9 cases agree with 'xla'" in log, log
  assert log.count("instruct_jax: ") == 3, log  # the compile-only case times no step
  assert log.count("pytorch ") == 2 and "speed-up" in log, log
  assert "step compile" in log.split("--compile_only\n")[-1], log
