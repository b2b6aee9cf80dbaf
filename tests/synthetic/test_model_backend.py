"""The project's own trained model as a synthetic-data and judge backend (`--backend model --workdir W`).

One tiny workdir is trained once for the module (a T5 trained for 2 steps: it answers nonsense, which is
what these tests need: it never ends before the token limit, never writes a readable verdict)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from instruct_jax import predict, sampling
from instruct_jax.evals import judge
from instruct_jax.synthetic import self_instruct
from instruct_jax.lm.backends import GenParams
from instruct_jax.lm.model import ModelBackend

from tests.synthetic.fakes import TOPICS

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env(devices=None):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  if devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _run(module, *args, timeout=300):
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=_env(), capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tiny_workdir")
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={REPO / 'configs' / 'tiny.py'}", f"--workdir={path}",
         "--config.total_steps=2", "--config.checkpoint_every=0", "--config.eval.num_examples=0",
         "--config.tokenizer.train_examples=200", "--config.data.batch_size=4"]
  proc = subprocess.run(cmd, cwd=REPO, env=_env(devices=1), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return path


@pytest.fixture(scope="module")
def backend(workdir):
  return ModelBackend.from_workdir(str(workdir), batch_size=8)


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def test_finish_reasons_of_a_generate_fn_that_reports_them():
  def generate_fn(prompts, **kw):
    del kw
    return [("abc", "length"), ("de", "stop"), ("x END y", "length"), "plain"][:len(prompts)]

  out = ModelBackend(generate_fn, batch_size=4).complete(["1", "2", "3", "4"], GenParams(stop=(" END",)))
  assert [(c.text, c.finish_reason) for c in out] == [("abc", "length"), ("de", "stop"), ("x", "stop"),
                                                      ("plain", None)]
  assert out[0].truncated and not out[1].truncated


def test_instruction_prompts_are_rendered_as_training_rendered_instruction_files(tmp_path):
  from instruct_jax import configs
  from instruct_jax.data import render, tasks
  records = [{"instruction": "Name a colour.", "input": "", "output": "Red."},
             {"instruction": "Translate.", "input": "Hund", "system": "Be brief.", "output": "Dog."}]
  task = tasks.instruction_task("mine", _write(tmp_path / "train.jsonl", records))
  config = configs.base()
  for ids, want_id in (((), 0), ((3, 4), 3)):
    config.data.render.template_ids = ids or None
    trained = render.render_split(task, "train", render.RenderConfig(template_ids=(want_id,)))
    assert predict.instruction_prompts(records, config) == [ex["inputs"] for ex in trained]
  assert predict.instruction_prompts(records[1:], config, template_id=0) == ["Be brief.\n\nTranslate.\n\nHund"]
  with pytest.raises(ValueError, match="not a standard template"):
    predict.instruction_prompts(records, config, template_id=5)   # 5 is the inverted one


@pytest.mark.slow  # the module's workdir is trained first (~15 s)
def test_the_model_backend_says_length_when_max_new_tokens_cut_the_output(workdir, backend):
  from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  prompts = ["Sort: 3 1 2", "Count the items: a b c", "Reverse: x y"]
  out = backend.complete(prompts, GenParams(max_new_tokens=4))
  assert backend.model == f"{workdir}@2"
  assert [c.finish_reason for c in out] == ["length"] * 3   # a 2-step model does not stop by itself
  # The rule behind it: a row that used the whole budget never emitted end-of-text.
  loaded = plan_lib.load(workdir)
  gen = predict.make_generate_fn(loaded.model, loaded.params, loaded.tokenizer, sampling.DecodeConfig(max_new_tokens=4),
                                 batch_size=8, max_prompt_tokens=loaded.config.data.inputs_length, mesh=loaded.mesh,
                                 rules=loaded.rules, with_ids=True, with_finish=True)
  for (text, ids, finish), c in zip(gen(prompts), out):
    assert (text, finish) == (c.text, c.finish_reason) and len(ids) == 4
  assert predict.finish_reason([5, 6], 4) == "stop" and predict.finish_reason([5, 6, 7, 8], 4) == "length"
  # A chat is rendered as the run rendered its instruction files: system, blank line, instruction.
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
  assert backend.chat_format(chat) == "Be brief.\n\nName a colour."


@pytest.mark.slow
def test_self_instruct_and_the_judge_on_the_trained_model(tmp_path, backend):
  seeds = _write(tmp_path / "seeds.jsonl", [
      {"id": f"s{i}", "instruction": f"Explain {TOPICS[i]} to a child.", "instances": [{"input": "",
       "output": f"About {TOPICS[i]}."}], "is_classification": False} for i in range(10)])
  config = self_instruct.SelfInstructConfig(
      seeds, num_instructions=3, requests_per_step=2, patience=1,
      generation=GenParams(max_new_tokens=6, temperature=0.7, top_p=0.5),
      classification=GenParams(max_new_tokens=3), instances=GenParams(max_new_tokens=6))
  report = self_instruct.run(config, backend, str(tmp_path / "si"))
  cache = [json.loads(line) for line in (tmp_path / "si" / "cache" / "requests.jsonl").read_text().splitlines()]
  assert len(cache) == 2 and {c["finish_reason"] for c in cache} == {"length"}
  # Self-Instruct drops responses cut by the token limit: with the model's finish reasons, its filter fires.
  assert report["counts"]["responses"] == {"cut_by_token_limit": 2} and report["stopped_early"]
  settings = json.loads((tmp_path / "si" / "settings.json").read_text())
  assert settings["backend"] == "model" and settings["model"] == backend.model

  prompts = [{"instruction": f"Describe {t}.", "input": "", "skill": s} for t, s in
             zip(TOPICS[:3], ["writing", "facts", "writing"])]
  p = _write(tmp_path / "prompts.jsonl", prompts)
  a = _write(tmp_path / "a.jsonl", [{**r, "output": f"{r['instruction']} It is nice."} for r in prompts])
  b = _write(tmp_path / "b.jsonl", [{**r, "output": "No idea."} for r in prompts])
  gen = GenParams(max_new_tokens=6)
  rating = judge.run(judge.JudgeConfig("rating", p, (a,), group_by="skill", max_attempts=2, generation=gen),
                     backend, str(tmp_path / "rating"))
  overall = rating["results"]["overall"]
  assert overall["n"] == 3 and overall["unparsable"] == 3   # nonsense is counted, never guessed
  assert rating["counts"]["answers"] == {"unparsable": 6} and rating["cache_misses"] == 6
  assert set(rating["results"]["groups"]) == {"writing", "facts"}
  pairwise = judge.run(judge.JudgeConfig("pairwise", p, (a, b), max_attempts=1, generation=gen), backend,
                       str(tmp_path / "pairwise"))
  assert pairwise["cache_misses"] == 6 and pairwise["results"]["overall"]["unparsable"] == 3
  record = json.loads((tmp_path / "pairwise" / "judge.jsonl").read_text().splitlines()[0])
  assert record["provenance"]["backend"] == "model"
  assert [a["finish_reason"] for j in record["judgements"] for a in j["answers"]] == ["length", "length"]


@pytest.mark.slow
def test_command_lines_generate_judge_and_self_instruct_with_the_model(tmp_path, workdir):
  prompts = [{"instruction": "Name a colour.", "input": "", "app": "paint"},
             {"instruction": "Translate the word.", "input": "Hund", "app": "dictionary"}]
  p = _write(tmp_path / "prompts.jsonl", prompts)
  preds = tmp_path / "ours.jsonl"
  _run("instruct_jax.generate", f"--workdir={workdir}", f"--prompts_file={p}", f"--output={preds}",
       "--max_new_tokens=5")
  rows = [json.loads(line) for line in preds.read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["Name a colour.", "Translate the word.\n\nHund"]   # template 0: {prompt}
  assert [r["app"] for r in rows] == ["paint", "dictionary"] and all(r["finish_reason"] == "length" for r in rows)
  proc = _run("instruct_jax.evals.judge", "--prompts", p, "--predictions", preds, "--group_by", "app",
              "--backend", "model", "--workdir", workdir, "--max_new_tokens", "4", "--max_attempts", "1",
              "--out", tmp_path / "judge", "--noprogress")
  assert "ours rated by model:" in proc.stdout and "app=dictionary" in proc.stdout
  seeds = _write(tmp_path / "seeds.jsonl", [
      {"instruction": f"Explain {t}.", "instances": [{"input": "", "output": "Because."}]} for t in TOPICS[:9]])
  _run("instruct_jax.synthetic.self_instruct", "--seed-tasks", seeds, "--backend", "model", "--workdir", workdir,
       "--model-batch-size", "4", "--requests-per-step", "2", "--num-instructions", "1", "--out", tmp_path / "si",
       "--no-progress", timeout=600)
  report = json.loads((tmp_path / "si" / "report.json").read_text())
  assert report["cache_misses"] > 0


@pytest.mark.slow  # imports a checkpoint: 12 s
def test_the_model_backend_serves_a_checkpoint_before_fine_tuning(workdir, backend):
  # --init_from: another checkpoint (here the workdir itself, as init_from takes any) with the defaults' settings
  # when no --workdir is given; it answers as the same weights do through the workdir.
  baseline = ModelBackend.from_workdir(None, init_from=str(workdir), batch_size=8)
  assert baseline.model == f"{workdir}@2"
  prompts = ["Sort: 3 1 2", "Reverse: x y"]
  params = GenParams(max_new_tokens=4)
  assert [c.text for c in baseline.complete(prompts, params)] == [c.text for c in backend.complete(prompts, params)]
