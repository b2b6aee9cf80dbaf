"""A run whose config names no evaluation task evaluates the user's test splits, or says on one line that it evaluates
nothing: never the built-in toy tasks in place of the user's data."""
import json
import pathlib

from instruct_jax import configs
from instruct_jax.data import mixtures
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import evaluators

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _file(path, n):
  path.write_text("".join(json.dumps({"instruction": f"Repeat {i}.", "output": str(i)}) + "\n" for i in range(n)))
  return str(path)


def _finetune(tmp_path, files):
  config = configs.load(ROOT / "configs" / "finetune.py")
  config.eval.num_examples = 4
  for name, value in files.items():
    config.data_paths.instruction_files[name] = value
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths.from_config(config.data_paths))
  return config, tasks, mixes


def test_the_user_s_test_splits_are_evaluated(tmp_path):
  files = {"mine": f"train={_file(tmp_path / 'a.jsonl', 8)},test={_file(tmp_path / 'b.jsonl', 6)}",
           "more": _file(tmp_path / "c.jsonl", 5)}  # no test split
  config, tasks, mixes = _finetune(tmp_path, files)
  said = []
  rows = evaluators.config_rows(config.eval, tasks, mixes, training_mixture=config.data.mixture, out=said.append)
  assert {r["task"] for r in rows} == {"mine"} and len(rows) == 4
  assert all(r["inputs"].startswith("Repeat") or "Repeat" in r["inputs"] for r in rows)
  assert said == ["note: config.eval.tasks is unset: evaluating the 'test' split of mine (4 examples each)"]


def test_no_test_split_evaluates_nothing_and_says_so_on_one_line(tmp_path):
  config, tasks, mixes = _finetune(tmp_path, {"mine": _file(tmp_path / "a.jsonl", 8)})
  said = []
  assert evaluators.config_rows(config.eval, tasks, mixes, training_mixture="instructions", out=said.append) == []
  assert len(said) == 1 and "\n" not in said[0] and "nothing is evaluated" in said[0]
  assert "config.data.mixture='instructions'" in said[0]
  config.eval.num_examples = 0  # finetune.py's default
  files = {"mine": f"train={_file(tmp_path / 'a.jsonl', 8)},test={_file(tmp_path / 'b.jsonl', 6)}"}
  config, tasks, mixes = _finetune(tmp_path, files)
  config.eval.num_examples, said = 0, []
  assert evaluators.config_rows(config.eval, tasks, mixes, training_mixture="mine", out=said.append) == []
  assert said and "config.eval.num_examples=0: nothing is evaluated" in said[0]


def test_built_in_training_keeps_the_built_in_conditions_and_named_tasks_win(tmp_path):
  config, tasks, mixes = _finetune(tmp_path, {"mine": _file(tmp_path / "a.jsonl", 8)})
  said = []
  rows = evaluators.config_rows(config.eval, tasks, mixes, training_mixture="builtin_order", out=said.append)
  assert rows and all(r["task"].startswith("builtin/") for r in rows) and said == []
  config.eval.tasks = ("builtin/reverse",)
  rows = evaluators.config_rows(config.eval, tasks, mixes, training_mixture="instructions", out=said.append)
  assert {r["task"] for r in rows} == {"builtin/reverse"} and said == []
