"""The trainer as users run it: resume after SIGKILL, SIGTERM saves, multi-process, TensorBoard, golden."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
STEPS = 40
COMMON = [f"--config.total_steps={STEPS}", "--config.checkpoint_every=8", "--config.eval.num_examples=0",
          "--config.log_every=1"]


def _env(devices: int = 8) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _cmd(workdir, *extra):
  return [sys.executable, "-m", "instruct_jax.train", f"--config={TINY}", f"--workdir={workdir}", *COMMON, *extra]


def _losses(workdir) -> dict[int, float]:
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _run(cmd, env=None, timeout=300):
  proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _wait_for(predicate, proc, timeout=240):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"process ended early: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
    if time.time() - start > timeout:
      proc.kill()
      raise AssertionError("timed out")
    time.sleep(0.2)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  _run(_cmd(workdir))
  return workdir


def test_uninterrupted_run_learns_and_writes_tensorboard(reference_run):
  losses = _losses(reference_run)
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert losses[STEPS] < losses[1]
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(reference_run / "tensorboard" / "train"))
  acc.Reload()
  tags = acc.Tags()["scalars"]
  for tag in ("train/loss", "train/token_accuracy", "train/learning_rate", "train/grad_norm", "train/param_norm",
              "train/tokens_per_sec", "train/nonpad_tokens_per_sec", "train/nonpad_share"):
    assert tag in tags, tags
  assert any(t.startswith("train/examples_seen/builtin/") for t in tags)
  events = acc.Scalars("train/loss")
  assert [e.step for e in events] == list(range(1, STEPS + 1))
  assert events[-1].value == pytest.approx(losses[STEPS], rel=1e-6)
  config = json.loads((reference_run / "config.json").read_text())
  assert config["total_steps"] == STEPS


@pytest.mark.slow
def test_sigkill_then_restart_reaches_the_same_final_loss(reference_run, tmp_path):
  proc = subprocess.Popen(_cmd(tmp_path), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  ckpts = tmp_path / "checkpoints"
  _wait_for(lambda: (ckpts / "16").is_dir(), proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  out = _run(_cmd(tmp_path)).stdout
  assert "Resumed from checkpoint step" in out
  ref, resumed = _losses(reference_run), _losses(tmp_path)
  assert resumed[STEPS] == pytest.approx(ref[STEPS], rel=1e-6)
  for s in range(17, STEPS + 1):  # same batches in the same order after the resume
    assert resumed[s] == pytest.approx(ref[s], rel=1e-6), s


@pytest.mark.slow
def test_sigterm_saves_and_resumes(reference_run, tmp_path):
  proc = subprocess.Popen(_cmd(tmp_path, "--config.checkpoint_every=100"), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(_losses(tmp_path)) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM received: saved checkpoint at step" in out
  saved = int(out.split("saved checkpoint at step ")[1].split()[0])
  assert 3 <= saved < STEPS and (tmp_path / "checkpoints" / str(saved)).is_dir()
  out = _run(_cmd(tmp_path, "--config.checkpoint_every=100")).stdout
  assert f"Resumed from checkpoint step {saved}" in out
  assert _losses(tmp_path)[STEPS] == pytest.approx(_losses(reference_run)[STEPS], rel=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  steps = ["--config.total_steps=4", "--config.data.host_input=slice_of_global", "--config.mesh.data=2",
           "--config.mesh.fsdp=4", "--config.sharding=fsdp"]
  one = tmp_path / "one"
  _run(_cmd(one, *steps), env=_env(8))
  two = tmp_path / "two"
  port = _free_port()
  procs = [subprocess.Popen(_cmd(two, *steps, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                                 f"--process_id={i}"), cwd=ROOT, env=_env(4), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][-2000:] + outs[1][-2000:]
  l1, l2 = _losses(one), _losses(two)
  assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
  for s in l1:
    assert l2[s] == pytest.approx(l1[s], rel=1e-5), (s, l1, l2)


def test_unreadable_latest_checkpoint_falls_back(reference_run, tmp_path):
  import shutil
  work = tmp_path / "w"
  shutil.copytree(reference_run / "checkpoints", work / "checkpoints")
  shutil.copy(reference_run / "tokenizer" / "spm.model", tmp_path / "spm.model")
  latest = work / "checkpoints" / str(STEPS)
  for f in latest.rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "state" in str(f):
      f.write_bytes(b"garbage")
  out = _run(_cmd(work, f"--config.total_steps={STEPS + 2}", f"--config.tokenizer.path={tmp_path / 'spm.model'}"))
  assert "unreadable" in out.stdout and f"Resumed from checkpoint step {STEPS - 8}" in out.stdout


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  proc = subprocess.run(_cmd(tmp_path, "--config.optim.learning_rate=1e12", "--config.optim.grad_clip_norm=0",
                             "--config.optim.warmup_steps=0", "--config.optim.schedule=constant",
                             "--config.checkpoint_every=1", "--config.loss.z_loss=0"),
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "stopping (the last good checkpoint is kept)" in proc.stderr
  bad = int(proc.stderr.split(" at step ")[1].split(";")[0])
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert all(s < bad for s in saved)  # no checkpoint holds the state that produced the bad loss


def test_periodic_evaluation_and_the_cli_commands(tmp_path):
  work = tmp_path / "w"
  _run(_cmd(work, "--config.total_steps=6", "--config.eval_every=3", "--config.eval.num_examples=1"))
  rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert any(r["step"] == 3 and "eval/seen_templates/rougeL" in r for r in rows)
  assert (work / "predictions.jsonl").is_file() and (work / "eval.json").is_file()
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("Input: 3 1 2\\nTask: sort ascending\\nOutput:\n{\"prompt\": \"Input: 5 4\\nTask: reverse\"}\n")
  out = tmp_path / "out.jsonl"
  _run([sys.executable, "-m", "instruct_jax.generate", f"--workdir={work}", f"--prompts_file={prompts}",
        f"--output={out}", "--max_new_tokens=4"])
  generated = [json.loads(line) for line in out.read_text().splitlines()]
  assert [g["prompt"] for g in generated] == ["Input: 3 1 2\nTask: sort ascending\nOutput:", "Input: 5 4\nTask: reverse"]
  eval_dir = tmp_path / "eval"
  stdout = _run([sys.executable, "-m", "instruct_jax.evaluate", f"--workdir={work}", "--num_examples=1",
                 f"--output_dir={eval_dir}"]).stdout
  assert "examples/s" in stdout and "seen_templates" in stdout
  metrics = json.loads((eval_dir / "metrics.json").read_text())
  assert metrics["examples"] == 18 * 1 + 15 * 1 and "by_cluster" in metrics["summary"]
