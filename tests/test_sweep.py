"""Sweeps: commands per point, config checks, collected tables and plots, resume after SIGKILL, SIGTERM."""
import csv
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest

from instruct_jax import configs, errors, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNSEEN = "by_condition/unseen_templates/rougeL"


def _env() -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _sweep_file(tmp_path, grid, plots=None, replicate="seed", name="sweep_config.py", tokenizer=None) -> str:
  """A sweep config file over configs/tiny.py, shortened to 6 steps and one example per evaluated task."""
  plots = plots if plots is not None else [dict(x="data.render.num_templates", y=UNSEEN, file="unseen.png",
                                                title="unseen templates")]
  path = tmp_path / name
  path.write_text(f"""from instruct_jax import configs


def get_config(arg=None):
  c = configs.load({str(TINY)!r})
  c.total_steps = 6
  c.checkpoint_every = 3
  c.eval.num_examples = 1
  return c


def get_sweep(arg=None):
  return dict(grid={grid!r}, replicate={replicate!r}, plots={plots!r}, tokenizer={tokenizer!r})
""")
  return str(path)


def _sweep_cmd(config, workdir, *extra):
  return [sys.executable, "-m", "instruct_jax.sweep", f"--config={config}", f"--workdir={workdir}", *extra]


def test_print_commands_one_per_point(tmp_path):
  grid = {"data.render.num_templates": [1, 2], "optim.learning_rate": [0.01], "data.shuffle": [False],
          "seed": [0, 1]}
  config, workdir = _sweep_file(tmp_path, grid), tmp_path / "sweep"
  proc = subprocess.run(_sweep_cmd(config, workdir, "--print_commands", "--set", "total_steps=50"), cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4
  cmds = [shlex.split(line) for line in lines]
  assert cmds[0][:4] == [sys.executable, "-m", "instruct_jax.train", f"--config={config}"]
  names = [c[4].split("/")[-1] for c in cmds]  # the first key outermost
  assert names == [f"num_templates={n},learning_rate=0.01,shuffle=False,seed={s}" for n in (1, 2) for s in (0, 1)]
  assert cmds[3][5:] == ["--config.data.render.num_templates=2", "--config.optim.learning_rate=0.01",
                         "--config.data.shuffle=False", "--config.seed=1", "--config.total_steps=50"]
  parsed = configs.from_command_line(cmds[3][3:])  # the trainer's own parsing takes every value as typed
  assert (parsed.data.render.num_templates, parsed.optim.learning_rate, parsed.data.shuffle, parsed.seed,
          parsed.total_steps) == (2, 0.01, False, 1, 50)
  assert not workdir.exists()


def test_print_commands_train_the_shared_tokenizer_first(tmp_path):
  config = _sweep_file(tmp_path, {"data.render.num_templates": [1, 2], "seed": [0]},
                       tokenizer=dict(mixture="builtin", vocab_size=300, num_examples=2000))
  workdir = tmp_path / "sweep"
  proc = subprocess.run(_sweep_cmd(config, workdir, "--print_commands"), cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr
  first, *points = [shlex.split(line) for line in proc.stdout.strip().splitlines()]
  assert first[1:3] == ["-m", "instruct_jax.data.vocab"] and f"--out={workdir / 'tokenizer'}" in first
  assert "--mixture=builtin" in first and "--vocab_size=300" in first and len(points) == 2
  assert all(f"--config.tokenizer.path={workdir / 'tokenizer'}" in cmd for cmd in points)
  with pytest.raises(errors.UserError, match="sweep tokenizer: keys"):
    sweep.check({"grid": {"seed": [0]}, "tokenizer": {"vocab_size": 3}})


def test_point_names_use_full_keys_where_leaves_clash():
  names = [name for name, _ in sweep.points({"data.batch_size": [8], "eval.batch_size": [4, 16],
                                              "data.render.template_ids": [(0, 1)], "data.mixture": ["a/b"]})]
  assert names == ["data.batch_size=8,eval.batch_size=4,template_ids=0-1,mixture=a_b",
                   "data.batch_size=8,eval.batch_size=16,template_ids=0-1,mixture=a_b"]


def test_config_mistakes_are_one_line_errors(tmp_path):
  typo = _sweep_file(tmp_path, {"data.render.num_template": [1, 2], "seed": [0]}, name="typo.py")
  with pytest.raises(errors.UserError, match=r"data\.render\.num_template: no such config key; did you mean "
                     r"data\.render\.num_templates\?") as e:
    sweep.load(typo)
  assert "\n" not in str(e.value)
  bad_x = _sweep_file(tmp_path, {"data.render.num_templates": [1, 2], "seed": [0]}, name="bad_x.py",
                      plots=[dict(x="optim.learning_rate", y=UNSEEN, file="a.png")])
  with pytest.raises(errors.UserError, match=r"x 'optim.learning_rate' is not a grid key"):
    sweep.load(bad_x)
  dotted = tmp_path / "dotted.py"
  dotted.write_text(pathlib.Path(typo).read_text() + "\n\ndef get_sweep(arg=None):\n  import ml_collections\n"
                    "  return ml_collections.ConfigDict({'grid': {'data.render.num_templates': [1]}})\n")
  with pytest.raises(errors.UserError, match=r"get_sweep\(\) failed: .*a ConfigDict refuses dotted keys"):
    sweep.load(str(dotted))
  bad_value = _sweep_file(tmp_path, {"data.render.num_templates": ["many"], "seed": [0]}, name="bad_value.py")
  loaded = sweep.load(bad_value)
  commands = {n: sweep.command(loaded, "/tmp/w", n, o) for n, o in sweep.points(loaded.grid)}
  with pytest.raises(errors.UserError, match=r"point num_templates=many,seed=0: .*num_templates"):
    sweep.check_commands(loaded, commands)
  with pytest.raises(errors.UserError, match=r"--set seed=3: seed is a grid key"):
    sweep.check_commands(loaded, commands, ["seed=3"])


def test_restart_with_another_grid_or_set_is_refused(tmp_path):
  config = _sweep_file(tmp_path, {"data.render.num_templates": [1, 2], "seed": [0]})
  first = sweep.load(config)
  sweep.check_record(str(tmp_path / "w"), first, ["total_steps=50"], write=True)
  sweep.check_record(str(tmp_path / "w"), first, ["total_steps=50"], write=True)  # the same sweep: fine
  other = sweep.check(dict(grid={"data.render.num_templates": [1, 2, 4], "seed": [0]}), config=config)
  with pytest.raises(errors.UserError, match=r"grid key data\.render\.num_templates: \[1, 2\] then, \[1, 2, 4\] "
                     r"now\); give this one its own --workdir"):
    sweep.check_record(str(tmp_path / "w"), other, ["total_steps=50"])
  with pytest.raises(errors.UserError, match=r"--set: \['total_steps=50'\] then, \[\] now"):
    sweep.check_record(str(tmp_path / "w"), first, [])


def _summary(rouge: float) -> dict:
  """An evaluation summary shaped as the trainer writes it."""
  row = lambda n, **extra: {"exact_match": rouge / 2, "rougeL": rouge, **extra, "n": n}
  return {"by_cluster": {"seen_templates/sort": row(60, rank_accuracy=80.0), "unseen_templates/sort": row(60)},
          "by_condition": {"seen_templates": row(120), "unseen_templates": {**row(120), "rougeL": rouge + 1}},
          "by_task": {"seen_templates/builtin/sort_numbers": row(60)},
          "by_template": {"unseen_templates/9": row(20)}, "by_shots": {"seen_templates/0": row(120)}}


def test_collect_tables_plots_and_their_numbers(tmp_path, capsys):
  grid = {"data.render.num_templates": [1, 2], "data.render.few_shot_rate": [0.0, 0.5], "seed": [0, 1]}
  spec = dict(grid=grid, replicate="seed", plots=[
      dict(x="data.render.num_templates", y=UNSEEN, file="unseen.png", title="unseen", xscale="log"),
      dict(x="data.render.few_shot_rate", y=["by_condition/seen_templates/rougeL", UNSEEN], file="both.png")])
  for name, o in sweep.points(grid):
    if name == "num_templates=2,few_shot_rate=0.5,seed=1":
      continue  # not finished: left out with a warning
    rouge = 10 * o["data.render.num_templates"] + 100 * o["data.render.few_shot_rate"] + 4 * o["seed"]
    (tmp_path / name).mkdir()
    (tmp_path / name / "eval.json").write_text(json.dumps({"before": None, "after": _summary(rouge), "step": 6}))
  results = sweep.collect(str(tmp_path), spec)
  assert results.missing == ["num_templates=2,few_shot_rate=0.5,seed=1"]
  assert "warning: 1 point(s) have no eval.json" in capsys.readouterr().out

  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ["point", *grid, "step", "grouping", "key", "metric", "value"]
  assert len(rows) == 7 * 7 * 3 + 7  # points x (grouping, key) x metric, and rank_accuracy once a point
  row, = [r for r in rows if r["point"] == "num_templates=1,few_shot_rate=0.5,seed=1"
          and (r["grouping"], r["key"], r["metric"]) == ("by_condition", "unseen_templates", "rougeL")]
  assert (row["data.render.num_templates"], row["seed"], row["step"], float(row["value"])) == ("1", "1", "6", 65.0)

  for file in ("unseen.png", "both.png"):
    assert (tmp_path / file).read_bytes()[:8] == PNG_MAGIC
  drawn = json.loads((tmp_path / "plots.json").read_text())
  assert drawn == results.plots
  assert list(drawn["unseen.png"]) == ["few_shot_rate=0.0", "few_shot_rate=0.5"]
  first = drawn["unseen.png"]["few_shot_rate=0.0"][0]  # num_templates=1: seeds give 11 and 15
  assert (first["x"], first["values"], first["n"]) == (1, [11.0, 15.0], 2)
  assert first["mean"] == pytest.approx(13.0) and first["std"] == pytest.approx(2.0)  # ddof=0
  lone = drawn["unseen.png"]["few_shot_rate=0.5"][1]  # one seed finished: no spread
  assert (lone["x"], lone["mean"], lone["std"], lone["n"]) == (2, 71.0, None, 1)
  assert list(drawn["both.png"]) == [f"{y}, num_templates={n}" for y in ("by_condition/seen_templates/rougeL",
                                                                         UNSEEN) for n in (1, 2)]
  seen = drawn["both.png"]["by_condition/seen_templates/rougeL, num_templates=1"]
  assert [(p["x"], p["mean"]) for p in seen] == [(0.0, 12.0), (0.5, 62.0)]
  assert "few_shot_rate=0.0" in sweep.format_table(drawn)
  sweep.check_record(str(tmp_path), sweep.check(spec), write=True)  # as a sweep's first start records it
  assert sweep.collect(str(tmp_path)).plots == drawn  # from a notebook: the sweep comes from DIR/sweep.json

  with pytest.raises(errors.UserError, match=r"y by_condition/unseen_templates/rogueL is in no point's eval\.json; "
                     r"did you mean by_condition/unseen_templates/rougeL\?"):
    sweep.collect(str(tmp_path), dict(spec, plots=[dict(x="data.render.num_templates", file="x.png",
                                                        y="by_condition/unseen_templates/rogueL")]))


def _wait_for(predicate, proc, timeout=180):
  start = time.time()
  while not predicate():
    assert proc.poll() is None, f"the sweep ended early with status {proc.returncode}"
    assert time.time() - start < timeout, "timed out"
    time.sleep(0.2)


@pytest.mark.slow
def test_sweep_resumes_after_sigkill_without_redoing_finished_points(tmp_path):
  config = _sweep_file(tmp_path, {"data.render.num_templates": [1, 2], "seed": [0]},
                       tokenizer=dict(mixture="builtin", vocab_size=300, num_examples=2000))
  workdir = tmp_path / "sweep"
  first, second = workdir / "num_templates=1,seed=0", workdir / "num_templates=2,seed=0"
  with open(tmp_path / "first.out", "w") as out:
    proc = subprocess.Popen(_sweep_cmd(config, workdir), cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      _wait_for(lambda: (first / "sweep_point.json").exists() and (second / "train.log").exists(), proc)
    finally:
      os.killpg(proc.pid, signal.SIGKILL)  # the sweep and the second point's trainer
      proc.wait()
  done = (first / "sweep_point.json").read_text()
  assert json.loads(done)["overrides"] == {"data.render.num_templates": 1, "seed": 0}
  kept = {f: (first / f).read_bytes() for f in ("metrics.jsonl", "train.log")}

  rerun = subprocess.run(_sweep_cmd(config, workdir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=180)
  assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
  assert "point 1/2 num_templates=1,seed=0: done, skipped" in rerun.stdout
  assert "point 2/2 num_templates=2,seed=0: done in" in rerun.stdout
  assert (first / "sweep_point.json").read_text() == done
  assert {f: (first / f).read_bytes() for f in kept} == kept
  assert (second / "sweep_point.json").exists() and (second / "eval.json").exists()
  # One tokenizer, trained once by the sweep, in every point (not one per point from its own templates).
  assert f"tokenizer {workdir / 'tokenizer'}: done, skipped" in rerun.stdout
  shared = (workdir / "tokenizer" / "spm.model").read_bytes()
  for point in (first, second):
    assert json.loads((point / "config.json").read_text())["tokenizer"]["path"] == str(workdir / "tokenizer")
    assert (point / "tokenizer" / "spm.model").read_bytes() == shared
  assert (workdir / "results.csv").exists() and (workdir / "unseen.png").read_bytes()[:8] == PNG_MAGIC
  assert set(json.loads((workdir / "plots.json").read_text())["unseen.png"][UNSEEN][0]) == {"x", "mean", "std", "n",
                                                                                          "values"}

  other = _sweep_file(tmp_path, {"data.render.num_templates": [1, 2, 4], "seed": [0]}, name="other.py")
  refused = subprocess.run(_sweep_cmd(other, workdir), cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=60)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "grid key data.render.num_templates: [1, 2] then, [1, 2, 4] now" in refused.stderr


@pytest.mark.slow
def test_sigterm_is_passed_on_and_the_point_stays_unfinished(tmp_path):
  config = _sweep_file(tmp_path, {"data.render.num_templates": [1], "seed": [0]})
  workdir = tmp_path / "sweep"
  point = workdir / "num_templates=1,seed=0"
  proc = subprocess.Popen(_sweep_cmd(config, workdir, "--set", "total_steps=100000"), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lambda: (point / "metrics.jsonl").exists() and (point / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(signal.SIGTERM)  # the sweep alone: it must tell the trainer
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
  assert proc.returncode == 143, err
  assert "SIGTERM passed on; the trainer exited with status 143" in err
  assert not (point / "sweep_point.json").exists()
  assert "SIGTERM received: saved checkpoint" in (point / "train.log").read_text()
