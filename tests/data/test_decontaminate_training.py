"""--config.data.decontaminate: training examples sharing an n-gram with the evaluation data are found, never trained
on nor shown as exemplars, and counted."""
import json
import pathlib

from instruct_jax import configs
from instruct_jax import plan as plan_lib
from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import render
from instruct_jax.data import report
from instruct_jax.data import tasks as tasks_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
LEAK = "The old lighthouse keeper counted forty seven ships passing the northern rocks before the winter storm"
PLANTED = (3, 17, 41)


def _files(tmp_path):
  train = []
  for i in range(50):
    text = f"Item {i}: describe a small blue bird number {i} sitting on a fence in spring."
    if i in PLANTED:  # the eval sentence, recased and repunctuated, inside a longer training input
      text = f"Read this. {LEAK.upper().replace(' SHIPS ', ', SHIPS; ')}! Then answer."
    train.append({"instruction": "Summarise the text.", "input": text, "output": f"bird {i}"})
  (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
  evals = [{"instruction": "Summarise.", "input": LEAK + ".", "output": "ships"},
           {"instruction": "Summarise.", "input": "Twelve words only here so nothing can match at thirteen ok",
            "output": "x"}]
  (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
  return str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")


def test_a_planted_overlap_is_dropped_from_training_and_exemplars(tmp_path):
  train, evals = _files(tmp_path)
  config = configs.base()
  config.data.mixture, config.data.decontaminate = "mine", evals
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths(instruction_files={"mine": train}))
  data = pipeline.PipelineConfig(mixture="mine", inputs_length=128, targets_length=16, batch_size=4,
                                 render=render.RenderConfig(few_shot_rate=1.0, max_shots=3))
  said = []
  clean = plan_lib.decontaminated(config, data, tasks, mixes, out=said.append)
  assert list(clean.exclude) == ["mine"] and clean.exclude["mine"].tolist() == list(PLANTED)
  assert said[0].startswith("decontaminate: 3 of 50 training examples share a 13-gram with the 2 examples of")
  assert "mine: 3 of 50 dropped (the first at record 3)" in said[0]
  examples, _, _ = pipeline.rendered_examples(clean, tasks, mixes)
  rendered = [examples[i] for i in range(300)]  # six epochs of the 47 kept examples, each with exemplars
  assert {ex["source_index"] for ex in rendered} == set(range(50)) - set(PLANTED)
  assert not any("lighthouse" in ex["inputs"].lower() for ex in rendered)
  assert any(ex["shots"] for ex in rendered)
  assert report.mixture_rates(clean, tasks, mixes)["decontaminated"] == {"mine": 3}
  # The leaked sentence has 17 words: n-grams of 18 or more find nothing.
  config.data.decontaminate_ngram = 18
  assert plan_lib.decontaminated(config, data, tasks, mixes, out=said.append).exclude == {}
  # Without the key nothing is read or dropped.
  config.data.decontaminate = ""
  assert plan_lib.decontaminated(config, data, tasks, mixes, out=said.append) is data


def test_the_trainer_says_how_many_it_drops(tmp_path, capsys):
  from instruct_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  train, evals = _files(tmp_path)
  config = configs.load(ROOT / "configs" / "tiny.py", "decoder")
  config.data_paths.instruction_files["mine"] = train
  config.data.mixture, config.data.decontaminate, config.eval.held_out_cluster = "mine", evals, ""
  assert train_lib.dry_run(config) == []
  out = capsys.readouterr().out
  assert "decontaminate: 3 of 50 training examples share a 13-gram" in out
