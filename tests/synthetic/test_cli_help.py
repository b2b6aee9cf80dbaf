"""Every synthetic command's --help lists the flags it shares through synthetic/cli.py, its own flags, and
the model backend's; a bad --workdir is a one-line error."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
OWN = {"self_instruct": "--seed_tasks", "evol_instruct": "--rounds", "orca": "--queries",
       "backtranslation": "--backward_workdir", "curation": "lm_rating"}


def _cli(module, *args):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-m", f"instruct_jax.synthetic.{module}", *map(str, args)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("method", sorted(OWN))
def test_help_lists_shared_and_own_flags(method):
  out = _cli(method, "--help").stdout
  for flag in ("--base_url", "--backend", "--model", "--out", "--num_instructions", "--workdir",
               "--model_batch_size", OWN[method]):
    assert flag in out, (method, flag)
  assert "<openai|model>" in out


def test_a_missing_workdir_is_a_one_line_error(tmp_path):
  (tmp_path / "seeds.jsonl").write_text('{"instruction": "Say hi.", "instances": []}\n')
  proc = _cli("self_instruct", "--seed-tasks", tmp_path / "seeds.jsonl", "--backend", "model",
              "--num-instructions", "2", "--out", tmp_path / "out")
  assert proc.returncode == 2 and proc.stderr.strip() == "error: --workdir is required", proc.stderr
