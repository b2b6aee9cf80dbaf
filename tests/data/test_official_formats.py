"""Published layouts read exactly, one example per instance, in training, generate and the judge: Self-Instruct's
{instruction, instances} and SuperNI task files; fields that look like inputs but would not be read are errors."""
import json

import pytest

from instruct_jax import errors
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import answers
from instruct_jax.evals import judge

SUPERNI_TASK = "task1146_country_capital.SUBSET.json"


def _write(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _seed(shared_data):
  path = shared_data / "self-instruct" / "seed_tasks.jsonl"
  return str(path), [json.loads(line) for line in path.read_text().splitlines()]


def test_the_self_instruct_seed_file_trains_one_example_per_instance(shared_data):
  path, seed = _seed(shared_data)
  source = sources.InstructionSource({"train": path})
  rows = source.load("train")
  instances = [(r["instruction"], i["input"], i["output"]) for r in seed for i in r["instances"]]
  assert len(rows) == len(instances) == 175
  assert [(r["instruction"], r["input"], r["output"]) for r in rows] == instances
  assert sum(1 for r in rows if r["input"]) == 125  # every instance's input is kept


def test_several_instances_are_several_examples_everywhere(tmp_path):
  record = {"id": "t1", "instruction": "Name the colour.", "motivation_app": "x",
            "instances": [{"input": "the sky", "output": "blue"}, {"input": "grass", "output": "green"},
                          {"input": "snow", "output": "white"}]}
  path = _write(tmp_path / "p.jsonl", [record, {"instruction": "Say hi.", "input": "", "output": "hi"}])
  train = sources.InstructionSource({"train": path}).load("train")
  assert [(r["input"], r["output"]) for r in train] == [("the sky", "blue"), ("grass", "green"), ("snow", "white"),
                                                        ("", "hi")]
  prompts = answers.read_prompts(path)
  assert [(p["input"], p.get("instance"), p["id"] if "id" in p else None) for p in prompts] == [
      ("the sky", 0, "t1"), ("grass", 1, "t1"), ("snow", 2, "t1"), ("", None, None)]
  assert all("instances" not in p for p in prompts) and prompts[0]["motivation_app"] == "x"
  # The judge: one item per instance, joined to generate's records (which repeat instruction and input).
  preds = _write(tmp_path / "o.jsonl", [{**p, "output": f"answer {i}"} for i, p in enumerate(prompts)])
  items = judge.load_items(judge.JudgeConfig("rating", path, (preds,)))
  assert [(it.instruction, it.input, it.outputs) for it in items] == [
      (p["instruction"], p["input"], (f"answer {i}",)) for i, p in enumerate(prompts)]
  # A prediction file made by reading one prompt per record (the input dropped) no longer joins.
  short = _write(tmp_path / "short.jsonl", [{"instruction": "Name the colour.", "output": "blue"},
                                            {"instruction": "Say hi.", "output": "hi"}])
  with pytest.raises(errors.UserError, match="has 2 records but .* has 4"):
    judge.load_items(judge.JudgeConfig("rating", path, (short,)))


def test_a_superni_task_file_is_one_example_per_instance_in_training_generate_and_the_judge(shared_data, tmp_path):
  path = str(shared_data / "natural-instructions" / "tasks" / SUPERNI_TASK)
  task = json.loads(open(path).read())
  definition = "\n".join(task["Definition"])
  rows = tasks_lib.instruction_task("capitals", path).source.load("train")
  assert len(rows) == len(task["Instances"]) == 30
  assert all(r["instruction"] == definition for r in rows)
  assert [(r["input"], r["output"]) for r in rows] == [(i["input"], i["output"][0]) for i in task["Instances"]]
  prompts = answers.read_prompts(path)
  assert [(p["input"], p["id"], p["references"]) for p in prompts] == [(i["input"], i["id"], i["output"])
                                                                      for i in task["Instances"]]
  preds = _write(tmp_path / "o.jsonl", [{**p, "output": "x"} for p in prompts])
  items = judge.load_items(judge.JudgeConfig("rating", path, (preds,)))
  assert len(items) == 30 and items[3].input == task["Instances"][3]["input"] and items[3].instruction == definition


@pytest.mark.parametrize("record, message", [
    ({"instruction": "Answer.", "question": "Why?", "output": "Because."},
     r"p.jsonl:1: field 'question' looks like an input"),
    ({"instruction": "Answer.", "context": "It rained.", "output": "Wet."}, r"field 'context' looks like an input"),
    ({"instruction": "Sort.", "input": "3 1", "instances": [{"input": "2 1", "output": "1 2"}]},
     r"p.jsonl:1: both 'input' and 'instances'"),
    ({"instruction": "Sort.", "instances": [{"input": "2 1", "output": "1 2", "text": "x"}]},
     r"p.jsonl:1 instance 0: unknown field\(s\) \['text'\]"),
    ({"instruction": "Sort.", "instances": []}, r"p.jsonl:1: field 'instances' must be a non-empty list"),
    ({"instruction": "Sort.", "instances": [{"input": 3, "output": "3"}]},
     r"p.jsonl:1 instance 0: field 'input' must be a string"),
])
def test_fields_that_would_be_dropped_are_errors_naming_them(tmp_path, record, message):
  path = _write(tmp_path / "p.jsonl", [record])
  with pytest.raises(sources.DataError, match=message):
    sources.InstructionSource({"train": path}).load("train")
  with pytest.raises(errors.UserError, match=message):
    answers.read_prompts(path)
  preds = _write(tmp_path / "o.jsonl", [{"instruction": record["instruction"], "output": "x"}])
  with pytest.raises(errors.UserError, match=message):
    judge.load_items(judge.JudgeConfig("rating", path, (preds,)))


def test_alpaca_s_own_text_field_is_not_an_input(tmp_path):
  # Alpaca's published file carries "text" (the whole formatted example) beside its fields.
  path = _write(tmp_path / "alpaca.jsonl", [{"instruction": "Sort.", "input": "3 1", "output": "1 3",
                                             "text": "Below is an instruction ... 1 3"}])
  assert sources.InstructionSource({"train": path}).load("train")[0]["input"] == "3 1"


def test_a_bad_superni_instance_names_itself(tmp_path):
  path = tmp_path / "task.json"
  path.write_text(json.dumps({"Definition": ["Say it."], "Instances": [{"id": "a", "input": "x", "output": ["y"]},
                                                                       {"id": "b", "input": "x", "output": []}]}))
  with pytest.raises(sources.DataError, match=r"task.json: Instances\[1\]: field 'output' must be a non-empty list"):
    sources.InstructionSource({"train": str(path)}).load("train")
