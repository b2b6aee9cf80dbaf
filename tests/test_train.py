"""The trainer as users run it: resume after SIGKILL, SIGTERM saves, multi-process, TensorBoard, golden."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from instruct_jax import workdir as workdir_lib

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


@pytest.mark.slow  # the reference run (22 s) and its checks
def test_uninterrupted_run_learns_and_writes_tensorboard(reference_run):
  losses = _losses(reference_run)
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert losses[STEPS] < losses[1]
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(reference_run / "tensorboard" / "train"))
  acc.Reload()
  tags = acc.Tags()["scalars"]
  for tag in ("train/loss", "train/token_accuracy", "train/learning_rate", "train/grad_norm", "train/param_norm",
              "train/tokens_per_sec", "train/nonpad_tokens_per_sec", "train/nonpad_share",
              "train/model_tflops_per_device"):
    assert tag in tags, tags
  assert "train/mfu" not in tags  # a CPU has no known peak
  assert any(t.startswith("train/examples_seen/builtin/") for t in tags)
  # Each task's realised share of the mixture so far is logged, and the start's rate table kept in mixture.json.
  shares = [acc.Scalars(t)[-1].value for t in tags if t.startswith("train/mixture_share/")]
  mixture = json.loads((reference_run / "mixture.json").read_text())
  assert len(shares) == len(mixture["tasks"]) and sum(shares) == pytest.approx(1.0, abs=1e-5)
  assert all(abs(t["realised"] - t["rate"]) < 0.01 for t in mixture["tasks"].values())
  # Loss per task and per template group, from the task and template ids the batch carries.
  assert any(t.startswith("train/nll_by_task/builtin/") for t in tags)
  assert {f"train/nll_by_template/{i}" for i in range(8)} <= set(tags)  # the tiny config trains on templates 0-7
  assert not any(t.startswith("train/nll_by_template/") and int(t.rsplit("/", 1)[1]) > 7 for t in tags)
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
  assert proc.returncode == 143, out[-3000:]  # config.preemption_exit_code: a stopped run is not a finished one
  assert "SIGTERM received: saved checkpoint at step" in out
  saved = int(out.split("saved checkpoint at step ")[1].split()[0])
  assert 3 <= saved < STEPS and (tmp_path / "checkpoints" / str(saved)).is_dir()
  out = _run(_cmd(tmp_path, "--config.checkpoint_every=100")).stdout
  assert f"Resumed from checkpoint step {saved}" in out
  assert _losses(tmp_path)[STEPS] == pytest.approx(_losses(reference_run)[STEPS], rel=1e-6)


class _StallingIterator:
  """A real batch iterator whose reader stalls for good after `after` batches (a hung filesystem, say)."""

  def __init__(self, inner, after):
    self.inner, self.after, self.served = inner, after, 0

  def __next__(self):
    if self.served == self.after:
      while True:  # only the SIGTERM handler's exception gets out of here
        time.sleep(0.05)
    self.served += 1
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


@pytest.mark.slow
def test_sigterm_while_the_reader_stalls_saves_every_step_done(reference_run, tmp_path, monkeypatch, capsys):
  """SIGTERM during a wait for data that never ends: the steps done are saved with the data position from
  before the wait, and the resumed run reaches the reference's final loss."""
  import dataclasses
  import threading
  from instruct_jax import configs, train
  from instruct_jax.data import pipeline as pipeline_lib
  real = pipeline_lib.make_pipeline

  class Stalling:
    def __init__(self, dataset):
      self.dataset = dataset

    def __iter__(self):
      return _StallingIterator(iter(self.dataset), after=5)

  def stalling_pipeline(*args, **kwargs):
    pipe = real(*args, **kwargs)
    return dataclasses.replace(pipe, dataset=Stalling(pipe.dataset))
  monkeypatch.setattr(pipeline_lib, "make_pipeline", stalling_pipeline)
  config = configs.load(TINY)
  config.total_steps, config.checkpoint_every, config.eval.num_examples, config.log_every = STEPS, 100, 0, 1

  def arm():  # SIGTERM once step 4's loss is logged (it is pulled after step 5 is dispatched): the 6th batch hangs
    while not ((tmp_path / "metrics.jsonl").exists() and 4 in _losses(tmp_path)):
      time.sleep(0.2)
    time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Thread(target=arm, daemon=True).start()
  try:
    result = train.train_and_evaluate(config, str(tmp_path))
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  out = capsys.readouterr().out
  assert result["stopped_early"] and result["final_step"] == 5, out[-2000:]
  assert "SIGTERM received: saved checkpoint at step 5 and stopped (it came while waiting for data)" in out
  assert (tmp_path / "checkpoints" / "5" / "checksums.json").is_file()
  out = _run(_cmd(tmp_path, "--config.checkpoint_every=100")).stdout
  assert "Resumed from checkpoint step 5" in out
  ref, resumed = _losses(reference_run), _losses(tmp_path)
  for s in range(6, STEPS + 1):  # the batches after the broken wait are the reference's
    assert resumed[s] == pytest.approx(ref[s], rel=1e-6), s


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


def _flip_a_bit(step_dir: pathlib.Path) -> pathlib.Path:
  """Flips one bit in the middle of the step's largest array file (its size stays the same)."""
  target = max((step_dir / "state").rglob("d/*"), key=lambda f: f.stat().st_size)
  data = bytearray(target.read_bytes())
  data[len(data) // 2] ^= 0x01
  target.write_bytes(bytes(data))
  return target


def _tb_steps(workdir, tag="train/loss") -> list[int]:
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(pathlib.Path(workdir) / "tensorboard" / "train"))
  acc.Reload()
  return [e.step for e in acc.Scalars(tag)]


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_skipped_then_set_aside_and_retrained(reference_run, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(reference_run, work)
  _flip_a_bit(work / "checkpoints" / str(STEPS))
  # A reader skips the bad step (it leaves it in place: only the trainer moves checkpoints).
  gen = _run([sys.executable, "-m", "instruct_jax.generate", f"--workdir={work}", "--prompt=Input: 3 1 2",
              "--max_new_tokens=2"])
  assert f"skipping checkpoint step {STEPS}" in gen.stdout and "SHA-256 mismatch" in gen.stdout
  assert (work / "checkpoints" / str(STEPS)).is_dir()
  # The trainer moves it aside, resumes from the step before, retrains and saves the step again; a resumable
  # key changed on the way is recorded in the resume history, and config.json keeps the original.
  out = _run(_cmd(work, "--config.keep_checkpoints=4")).stdout
  assert f"checkpoint step {STEPS} is corrupt" in out and f"Resumed from checkpoint step {STEPS - 8}" in out
  assert [p.name.split("-")[0] for p in (work / "checkpoints_corrupt").iterdir()] == [str(STEPS)]
  assert (work / "checkpoints" / str(STEPS) / "checksums.json").is_file()
  assert _losses(work)[STEPS] == pytest.approx(_losses(reference_run)[STEPS], rel=1e-6)
  # Steps replayed after the resume are logged once, in metrics.jsonl and in TensorBoard.
  rows = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()
          if "train/loss" in line]
  assert rows == list(range(1, STEPS + 1))
  assert _tb_steps(work) == list(range(1, STEPS + 1))
  history = [json.loads(line) for line in (work / "resume_history.jsonl").read_text().splitlines()]
  assert history[-1]["resumed_from_step"] == STEPS - 8 and history[-1]["changed"] == {"keep_checkpoints": [10, 4]}
  assert json.loads((work / "config.json").read_text())["keep_checkpoints"] == 10


def _snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
  """Every file's bytes, but the lock's (whoever last held it: a refused restart holds it too)."""
  return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
          if p.is_file() and p.name != workdir_lib.LOCK}


@pytest.mark.slow  # needs the reference run
def test_a_restart_with_another_model_or_tokenizer_is_refused_before_anything_is_written(reference_run, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(reference_run, work)
  before = _snapshot(work)
  proc = subprocess.run(_cmd(work, "--config.model.overrides.d_model=64", "--config.tokenizer.vocab_size=400"),
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line, = proc.stderr.strip().splitlines()
  assert "--config.model.overrides.d_model 32 -> 64" in line and "--config.tokenizer.vocab_size 300 -> 400" in line
  assert _snapshot(work) == before  # the first run is untouched, so generate, evaluate and convert still read it


def test_lengths_too_short_for_the_templates_are_a_config_error_and_nothing_is_recorded(tmp_path):
  proc = subprocess.run(_cmd(tmp_path / "w", "--config.data.inputs_length=1"), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  line, = proc.stderr.strip().splitlines()
  assert "config.data.inputs_length=1 is too short for task" in line and "own words take" in line
  assert not (tmp_path / "w" / "config.json").exists()  # a corrected rerun of the same workdir is not refused


@pytest.mark.slow
def test_evaluate_and_convert_read_only_good_steps(reference_run, tmp_path):
  work = tmp_path / "w"
  shutil.copytree(reference_run, work)
  _flip_a_bit(work / "checkpoints" / str(STEPS))
  out = _run([sys.executable, "-m", "instruct_jax.evaluate", f"--workdir={work}", "--num_examples=1",
              f"--output_dir={tmp_path / 'eval'}"]).stdout
  assert f"skipping checkpoint step {STEPS}" in out
  assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["step"] == STEPS - 8
  convert = [sys.executable, "-m", "instruct_jax.convert", "--to=hf", f"--src={work}"]
  out = _run(convert + [f"--dst={tmp_path / 'hf'}"]).stdout
  assert f"skipping checkpoint step {STEPS}" in out and (tmp_path / "hf" / "config.json").is_file()
  proc = subprocess.run(convert + [f"--step={STEPS}", f"--dst={tmp_path / 'hf2'}"], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and f"checkpoint step {STEPS}" in proc.stderr and "corrupt" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_kill_9_at_ten_random_moments_then_the_same_final_loss(reference_run, tmp_path):
  """SIGKILL at random moments (one of them while a checkpoint is being written); each restart resumes,
  and the run ends with the uninterrupted run's final loss, every step logged once."""
  import random
  rng = random.Random(17)
  work = tmp_path / "w"
  cmd = _cmd(work, "--config.checkpoint_every=2")
  ckpts = work / "checkpoints"
  kills = 0
  while kills < 10:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kills == 0:  # during a save: the moment orbax's temporary step directory appears
      _wait_for(lambda: any(".orbax-checkpoint-tmp" in p.name for p in ckpts.glob("*")) if ckpts.is_dir() else False,
                proc)
    else:
      time.sleep(rng.uniform(2.0, 14.0))
    if proc.poll() is not None:  # finished before the kill: the run is complete
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  _run(cmd)
  ref, got = _losses(reference_run), _losses(work)
  assert got[STEPS] == pytest.approx(ref[STEPS], rel=1e-6)
  rows = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()
          if "train/loss" in line]
  assert rows == list(range(1, STEPS + 1))  # each step logged once, whichever process logged it
  assert _tb_steps(work) == list(range(1, STEPS + 1))
  assert kills >= 5, kills  # most of the kills landed before the run could finish


@pytest.mark.slow
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


@pytest.mark.parametrize("pack", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_the_train_step_is_told_whether_rows_hold_one_example(tmp_path, monkeypatch, pack):
  """data.pack reaches the step as `packed` (False lets cuDNN take row lengths, which packed rows must never get)."""
  from instruct_jax import configs, step, train  # pylint: disable=g-import-not-at-top
  seen = {}

  class Built(Exception):
    pass

  def spy(*args, **kwargs):
    seen.update(kwargs)
    raise Built
  monkeypatch.setattr(step, "jit_train_step", spy)
  config = configs.load(TINY)
  config.data.pack, config.eval.num_examples = pack, 0
  with pytest.raises(Built):
    train.train_and_evaluate(config, str(tmp_path))
  assert seen["packed"] is pack


@pytest.mark.slow  # ~30 s: three command-line processes after a training run
def test_periodic_evaluation_and_the_cli_commands(tmp_path):
  work = tmp_path / "w"
  _run(_cmd(work, "--config.total_steps=6", "--config.eval_every=3", "--config.eval.num_examples=1",
            "--config.evals.check=kind=tasks,tasks=builtin_check,every=2,num_examples=2"))
  rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  assert any(r["step"] == 3 and "eval/seen_templates/rougeL" in r for r in rows)
  # The second evaluator on its own schedule (steps 2, 4 and the end), its rows named after it.
  assert sorted(r["step"] for r in rows if "eval/check/rougeL" in r) == [2, 4, 6]
  assert {"eval/check/rougeL", "eval/seen_templates/rougeL"} <= {k for r in rows if r["step"] == 6 for k in r}
  assert not any("eval/seen_templates/rougeL" in r for r in rows if r["step"] in (2, 4))
  check = json.loads((work / "eval_check.json").read_text())["after"]
  assert check["by_condition"]["check"]["n"] == 3 * 2 and set(check["by_cluster"]) == {"check/check"}
  assert len((work / "predictions_check.jsonl").read_text().splitlines()) == 6
  assert (work / "predictions.jsonl").is_file() and (work / "eval.json").is_file()
  # eval_results.csv beside the events: the periodic evaluation at 3 and the final one at 6, every grouping.
  import csv
  with open(work / "eval_results.csv", newline="") as f:
    results = list(csv.DictReader(f))
  assert sorted({int(r["step"]) for r in results if r["evaluator"] == "eval"}) == [3, 6]
  assert sorted({int(r["step"]) for r in results if r["evaluator"] == "check"}) == [2, 4, 6]
  final = json.loads((work / "eval.json").read_text())["after"]
  got = {(r["grouping"], r["key"], r["metric"]): float(r["value"]) for r in results
         if r["step"] == "6" and r["evaluator"] == "eval"}
  want = {(g, k, m): v for g, groups in final.items() for k, scores in groups.items() for m, v in scores.items()}
  assert got == pytest.approx(want) and ("by_template", "unseen_templates/8", "rougeL") in got
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
  with open(eval_dir / "eval_results.csv", newline="") as f:
    assert {(r["step"], r["grouping"]) for r in csv.DictReader(f)} >= {("6", "by_cluster"), ("6", "by_shots")}


@pytest.mark.slow  # needs the reference run
def test_evaluate_scores_a_superni_split_under_each_tasks_own_category(reference_run, shared_data, tmp_path):
  ni = shared_data / "natural-instructions"
  out = _run([sys.executable, "-m", "instruct_jax.evaluate", f"--workdir={reference_run}", f"--superni_dir={ni}",
              "--superni_split=test", "--num_examples=1", f"--output={tmp_path / 'm.json'}",
              f"--output_dir={tmp_path / 'eval'}"]).stdout
  listed = [line.strip() for line in (ni / "splits" / "test_tasks.txt").read_text().splitlines() if line.strip()]
  present = sorted(n for n in listed if any((ni / "tasks").glob(f"{n}*.json")))
  assert f"{len(listed) - len(present)} of the {len(listed)} tasks of split 'test' are not in" in out
  metrics = json.loads((tmp_path / "m.json").read_text())
  assert sorted(metrics["by_task"]) == [f"niv2/{n}" for n in present]
  expected = set()
  for n in present:
    task_file = next((ni / "tasks").glob(f"{n}*.json"))
    expected.add(json.loads(task_file.read_text())["Categories"][0])
  assert set(metrics["by_category"]) == expected and "superni" not in metrics["by_category"]
  assert metrics["num_instances"] == len(present) and {"overall", "by_track"} <= set(metrics)
  # The flat keys SuperNI's scripts write, beside the nested ones and equal to them.
  official = json.loads((tmp_path / "eval" / "superni_results.json").read_text())
  assert official == metrics["official"]
  assert official["rougeL"] == round(metrics["overall"]["rougeL"], 4) == official["rougeL_default_track"]
  for category, scores in metrics["by_category"].items():
    key = "_".join(category.lower().split())
    assert official[f"exact_match_for_{key}"] == round(scores["exact_match"], 4)
    assert official[f"rougeL_for_{key}_default_track"] == round(scores["rougeL"], 4)
  assert {f"rougeL_for_niv2/{n}" for n in present} <= set(official)
