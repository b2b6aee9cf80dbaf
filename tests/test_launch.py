"""The launchers parse, pass shellcheck, and print their usage without gcloud, sbatch or srun."""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "launch" / "tpu_pod.sh", ROOT / "launch" / "slurm.sh"]


def _run_without_cluster_tools(tmp_path, *args) -> subprocess.CompletedProcess:
  """Runs a script with a PATH holding only bash and sed, so any gcloud/sbatch/srun call would fail."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for tool in ("bash", "sed"):
    link = bin_dir / tool
    if not link.exists():
      link.symlink_to(shutil.which(tool))
  return subprocess.run([str(bin_dir / "bash"), *map(str, args)], env={"PATH": str(bin_dir)},
                        capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
  proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
  proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage_without_cluster_tools(script, tmp_path):
  for flag in ("--help", "-h"):
    proc = _run_without_cluster_tools(tmp_path, script, flag)
    assert proc.returncode == 0, proc.stderr
    assert "Arguments: CONFIG WORKDIR [-- TRAINER_ARGS...]" in proc.stdout
    assert "set -euo" not in proc.stdout and "#SBATCH --" not in proc.stdout
  # Bad arguments are refused with a message before any cluster tool is called.
  for args in (["configs/tiny.py"], ["configs/tiny.py", "/tmp/w", "--config.total_steps=5"]):
    proc = _run_without_cluster_tools(tmp_path, script, *args)
    assert proc.returncode == 2 and "error:" in proc.stderr, (args, proc.stderr)


def test_tpu_settings_come_from_the_environment():
  usage = (ROOT / "launch" / "tpu_pod.sh").read_text()
  for name in ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "VERSION"):
    assert re.search(rf'^{name}="\${{{name}:-[^}}]+}}"$', usage, re.M), name


def test_slurm_defaults_run_one_process_per_gpu():
  sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", (ROOT / "launch" / "slurm.sh").read_text(), re.M))
  assert int(sbatch["nodes"]) >= 1
  assert sbatch["ntasks-per-node"] == sbatch["gpus-per-node"], sbatch
