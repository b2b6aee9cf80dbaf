"""generate's outputs: appended as they are done and resumed after a kill, AlpacaEval's JSON list, MT-Bench's
FastChat answers (each checked field by field against the published schemas), and the judge reading both."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from instruct_jax import configs, train
from instruct_jax.evals import judge
from instruct_jax.evals.answers import ResumableJsonl

from tests.evals.test_judge import FakeJudge, _backend
from tests.synthetic.fakes import FakeOpenAIServer
from tests.test_train import ROOT, TINY, _env

TOPICS = ["red apples", "blue boats", "green tea", "small cats", "tall trees", "warm bread"]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
  """A tiny decoder trained a few steps on ChatML conversations (so MT-Bench has a chat format)."""
  root = tmp_path_factory.mktemp("gen")
  lines = [json.dumps({"messages": [{"role": "user", "content": f"Tell me about {t}."},
                                    {"role": "assistant", "content": t}]}) for t in TOPICS * 4]
  (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
  config = configs.load(TINY, "decoder")
  config.total_steps, config.checkpoint_every, config.eval.num_examples = 3, 0, 0
  config.data_paths.chat_files["talk"] = str(root / "chat.jsonl")
  config.data.mixture, config.data.chat_format = "chat", "chatml"
  config.data.inputs_length, config.data.targets_length = 64, 32
  train.train_and_evaluate(config, str(root / "run"))
  return root


def _generate(*args, **kw):
  return subprocess.Popen([sys.executable, "-m", "instruct_jax.generate", *map(str, args), "--noprogress"], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _done(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return out, err


def _lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_resumable_output_keeps_finished_records_and_drops_a_torn_line(tmp_path):
  path = tmp_path / "out.jsonl"
  expected = [{"prompt": f"p{i}"} for i in range(4)]
  path.write_text('{"prompt": "p0", "output": "a"}\n{"prompt": "p1", "output": "b"}\n{"prompt": "p2", "out')
  with ResumableJsonl(str(path), expected, "prompt") as out:
    assert out.done == 2
    out.append({"prompt": "p2", "output": "c"})
    out.flush()
  assert [r["output"] for r in _lines(path)] == ["a", "b", "c"]
  with pytest.raises(Exception, match=r"out.jsonl:2: written for another prompt than this run's 2-th"):
    ResumableJsonl(str(path), [{"prompt": "p0"}, {"prompt": "other"}, {"prompt": "p2"}], "prompt")


@pytest.mark.slow  # three generate runs (one killed): 40 s
def test_a_killed_generate_resumes_to_the_uninterrupted_output(chat_run, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"instruction": f"Say {t}.", "input": str(i)}) + "\n"
                             for i, t in enumerate(TOPICS * 2)))
  common = [f"--workdir={chat_run / 'run'}", f"--prompts_file={prompts}", "--max_new_tokens=6", "--batch_size=2",
            "--temperature=0.8", "--seed=3"]
  _done(_generate(*common, f"--output={tmp_path / 'whole.jsonl'}"))
  killed = tmp_path / "killed.jsonl"
  proc = _generate(*common, f"--output={killed}")
  deadline = time.time() + 240
  while not (killed.exists() and len(killed.read_text().splitlines()) >= 4):
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.stderr else ""
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  kept = len(killed.read_text().splitlines())
  assert 4 <= kept < 12
  _, err = _done(_generate(*common, f"--output={killed}"))
  assert f"({kept} from an earlier run)" in err
  assert _lines(killed) == _lines(tmp_path / "whole.jsonl")  # sampled, yet the same: seeds follow the batch


@pytest.mark.slow  # two generate runs and two judge runs: 40 s
def test_alpaca_eval_and_mt_bench_outputs_and_the_judge_reads_both(chat_run, tmp_path):
  # AlpacaEval: its evaluation set is a JSON list {instruction, output (a reference), generator, dataset}.
  eval_set = [{"instruction": f"Tell me about {t}.", "output": t, "generator": "gpt4", "dataset": "helpful_base"}
              for t in TOPICS]
  (tmp_path / "alpaca_eval.json").write_text(json.dumps(eval_set))
  out = tmp_path / "model_outputs.json"
  _done(_generate(f"--workdir={chat_run / 'run'}", f"--prompts_file={tmp_path / 'alpaca_eval.json'}",
                  "--max_new_tokens=6", "--format=alpaca_eval", "--generator=tiny-chatml", f"--output={out}"))
  outputs = json.loads(out.read_text())
  assert isinstance(outputs, list) and len(outputs) == len(eval_set)
  for row, ref in zip(outputs, eval_set):
    assert set(row) == {"instruction", "output", "generator", "dataset"}
    assert row["instruction"] == ref["instruction"] and row["dataset"] == "helpful_base"
    assert row["generator"] == "tiny-chatml" and isinstance(row["output"], str)
  assert len(_lines(tmp_path / "model_outputs.json.records.jsonl")) == len(eval_set)
  # MT-Bench: question.jsonl lines {question_id, category, turns}; FastChat's answers, one line per question.
  questions = [{"question_id": 81 + i, "category": "writing", "turns": [f"Tell me about {t}.", "Say it again."]}
               for i, t in enumerate(TOPICS[:3])] + [{"question_id": 99, "category": "math", "turns": ["Add 2 and 3."]}]
  (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
  answers = tmp_path / "tiny.jsonl"
  _done(_generate(f"--workdir={chat_run / 'run'}", "--mt_bench", f"--prompts_file={tmp_path / 'question.jsonl'}",
                  "--max_new_tokens=6", "--batch_size=2", f"--output={answers}"))
  rows = _lines(answers)
  assert [r["question_id"] for r in rows] == [81, 82, 83, 99]
  for row, q in zip(rows, questions):
    assert set(row) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert isinstance(row["answer_id"], str) and len(row["answer_id"]) == 22 and row["model_id"] == "run"
    assert isinstance(row["tstamp"], float) and row["choices"][0]["index"] == 0
    assert len(row["choices"][0]["turns"]) == len(q["turns"]) and all(isinstance(t, str)
                                                                       for t in row["choices"][0]["turns"])
  # The judge reads both: AlpacaEval's lists joined by position, MT-Bench's answers by question_id, a turn each.
  fake = FakeJudge()

  def verdict(messages, params):
    del params
    return "Reasons.\nVerdict: B" if "Response:" in messages[-1]["content"] else fake.chat(messages, None)

  with FakeOpenAIServer(chat_fn=verdict) as server:
    report = judge.run(judge.JudgeConfig("rating", str(tmp_path / "alpaca_eval.json"), (str(out),)),
                       _backend(server), str(tmp_path / "judged_alpaca"))
    assert report["results"]["overall"]["counts"]["B"] == len(eval_set)
    config = judge.JudgeConfig("rating", str(tmp_path / "question.jsonl"), (str(answers),))
    items = judge.load_items(config)
    assert len(items) == 7 and items[1].instruction == "Say it again." and "Tell me about red apples." in items[1].input
    assert items[1].outputs == (rows[0]["choices"][0]["turns"][1],) and items[1].group == "turn 2"
    report = judge.run(config, _backend(server), str(tmp_path / "judged_mt"))
  assert report["results"]["overall"]["n"] == 7


@pytest.mark.slow  # one generate run and one judge run: 20 s
def test_self_instruct_instances_round_trip_through_generate_and_the_judge(chat_run, tmp_path, shared_data):
  # Self-Instruct's published layout: {id, instruction, instances: [{input, output}], ...}; one prompt per instance.
  seed = [json.loads(line) for line in (shared_data / "self-instruct" / "seed_tasks.jsonl").read_text().splitlines()]
  records = [r for r in seed if r["instances"][0]["input"]][:6]
  records.append({"id": "extra", "instruction": "Describe the colour.", "motivation_app": "test",
                  "instances": [{"input": f"the {t}", "output": t} for t in TOPICS[:3]]})
  prompts = tmp_path / "self_instruct.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
  out = tmp_path / "ours.jsonl"
  _done(_generate(f"--workdir={chat_run / 'run'}", f"--prompts_file={prompts}", "--max_new_tokens=4",
                  f"--output={out}"))
  rows = _lines(out)
  instances = [(r["instruction"], i["input"], i["output"]) for r in records for i in r["instances"]]
  assert len(rows) == len(instances) == 9
  for row, (instruction, inp, reference) in zip(rows, instances):
    assert (row["instruction"], row["input"], row["reference"]) == (instruction, inp, reference)
    assert inp.strip() in row["prompt"]  # the model read the instance's input
  asked = []

  def rate(messages, params):
    del params
    asked.append(messages[-1]["content"])
    return "Reasons.\nVerdict: B"

  with FakeOpenAIServer(chat_fn=rate) as server:
    config = judge.JudgeConfig("rating", str(prompts), (str(out),), group_by="id")
    items = judge.load_items(config)
    assert [(it.instruction, it.input) for it in items] == [(a, b) for a, b, _ in instances]
    report = judge.run(config, _backend(server), str(tmp_path / "judged"))
  assert report["results"]["overall"]["n"] == 9
  assert len(asked) == 9  # each question holds its instance's input (asked concurrently: in any order)
  assert sorted(next(i for i, (_, inp, _) in enumerate(instances) if f"\n{inp.strip()}\n" in q) for q in asked) == \
      list(range(9))
