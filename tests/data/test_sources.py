"""One test group per source kind: JSONL, JSON, Alpaca/Self-Instruct, TFDS (a builder made here), SuperNI."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import render
from instruct_jax.data import sources
from instruct_jax.data import superni
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates


def _write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


# --- JSONL / JSON ----------------------------------------------------------------------------------------


def test_jsonl_strict_names_file_and_line(tmp_path):
  path = _write(tmp_path / "d.jsonl", '{"q": "a", "answer": "b"}\n\n{"q": "c", "answer": \n{"q": "e"}\n')
  with pytest.raises(sources.DataError, match=r"d\.jsonl:3: malformed JSON line"):
    sources.JsonlSource({"train": path}).load("train")


def test_jsonl_lenient_skips_and_counts(tmp_path):
  path = _write(tmp_path / "d.jsonl", '{"q": "a"}\nnot json\n[1, 2]\n{"q": "b"}\n')
  src = sources.JsonlSource({"train": path}, strict=False)
  assert [r["q"] for r in src.load("train")] == ["a", "b"]
  assert src.stats.bad_lines == 2
  assert src.stats.records == 2
  assert any("d.jsonl:3" in p and "expected a JSON object" in p for p in src.stats.problems)


def test_jsonl_unknown_split(tmp_path):
  path = _write(tmp_path / "d.jsonl", '{"q": "a"}\n')
  with pytest.raises(sources.DataError, match="no split 'test'"):
    sources.JsonlSource({"train": path}).load("test")


def test_json_list_and_keyed(tmp_path):
  a = _write(tmp_path / "a.json", json.dumps([{"x": 1}, {"x": 2}]))
  b = _write(tmp_path / "b.json", json.dumps({"data": [{"x": 3}]}))
  assert [r["x"] for r in sources.JsonSource({"train": a}).load("train")] == [1, 2]
  assert sources.JsonSource({"train": b}, records_key="data").load("train") == [{"x": 3}]
  with pytest.raises(sources.DataError, match=r"b\.json: expected a list"):
    sources.JsonSource({"train": b}).load("train")


def test_json_malformed_reports_line_and_column(tmp_path):
  path = _write(tmp_path / "bad.json", '[\n  {"x": 1},\n  {"x": }\n]')
  with pytest.raises(sources.DataError, match=r"bad\.json:3:\d+: malformed JSON"):
    sources.JsonSource({"train": path}).load("train")


def test_jsonl_task_renders_with_user_templates(tmp_path):
  path = _write(tmp_path / "qa.jsonl", '{"question": "2+2?", "answer": "4"}\n{"question": "3+3?", "answer": "6"}\n')
  tmpl = templates.parse({"qa": ["Q: {question}\nA:", {"inputs": "{question}", "targets": "It is {answer}."}]},
                         "inline")
  task = tasks_lib.Task("qa", sources.JsonlSource({"train": path}), tmpl["qa"])
  exs = render.render_split(task, "train", render.RenderConfig(template_ids=(1,)))
  assert [(e["inputs"], e["targets"]) for e in exs] == [("2+2?", "It is 4."), ("3+3?", "It is 6.")]


# --- Alpaca / Self-Instruct -----------------------------------------------------------------------------


def test_alpaca_json_and_prompt(tmp_path):
  records = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
             {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be brief."},
             {"instruction": "Empty one.", "input": "", "output": "  "}]
  task = tasks_lib.instruction_task("mine", _write(tmp_path / "a.json", json.dumps(records)))
  exs = render.render_split(task, "train", render.RenderConfig(template_ids=(0,)))
  assert [e["inputs"] for e in exs] == ["Add the numbers.\n\n2 and 3", "Be brief.\n\nSay hi."]
  assert [e["targets"] for e in exs] == ["5", "Hi!"]
  assert task.source.stats.empty_outputs == 1
  assert "a.json: record 2: empty output" in task.source.stats.problems[0]


def test_alpaca_inverted_template_asks_for_the_instruction(tmp_path):
  path = _write(tmp_path / "a.jsonl", json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n")
  task = tasks_lib.instruction_task("mine", path)
  inverted = [t.id for t in task.templates if t.kind == "inverted"]
  ex = render.render_split(task, "train", render.RenderConfig(template_ids=(0, *inverted), inversion_rate=1.0))[0]
  assert "Blue." in ex["inputs"] and ex["targets"] == "Name a colour."
  assert ex["template_id"] == inverted[0] and ex["references"] == ["Name a colour."]


def test_alpaca_missing_field_names_file_line_field(tmp_path):
  path = _write(tmp_path / "a.jsonl", '{"instruction": "ok", "output": "fine"}\n{"instruction": "no output"}\n')
  with pytest.raises(sources.DataError, match=r"a\.jsonl:2: missing field 'output'"):
    sources.InstructionSource({"train": path}).load("train")


def test_alpaca_wrong_type_names_field(tmp_path):
  path = _write(tmp_path / "a.json", json.dumps([{"instruction": "ok", "output": 3}]))
  with pytest.raises(sources.DataError, match=r"a\.json: record 0: field 'output' must be a string"):
    sources.InstructionSource({"train": path}).load("train")


def test_self_instruct_seed_tasks(shared_data):
  src = sources.InstructionSource({"train": shared_data / "self-instruct" / "seed_tasks.jsonl"})
  records = src.load("train")
  with open(shared_data / "self-instruct" / "seed_tasks.jsonl") as f:
    raw = [json.loads(line) for line in f if line.strip()]
  assert len(raw) == 175
  assert len(records) == sum(len(r["instances"]) for r in raw) - src.stats.empty_outputs
  assert sum(1 for r in raw if not r["instances"][0]["input"].strip()) == 50
  assert records[0]["instruction"] == raw[0]["instruction"]
  assert records[0]["output"] == raw[0]["instances"][0]["output"]


# --- TFDS through tfds.data_source, with a builder made here ----------------------------------------------


class InstructJaxTinyRte(tfds.core.GeneratorBasedBuilder):
  """A four-row stand-in for glue/rte with the same features (sentence1, sentence2, label, idx)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "sentence1": tfds.features.Text(), "sentence2": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["entailment", "not_entailment"]), "idx": np.int32}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(labelled=True), "test": self._generate_examples(labelled=False)}

  def _generate_examples(self, labelled=True):
    for i in range(4):
      yield i, {"sentence1": f"Cats are mammals number {i}.", "sentence2": f"Claim {i}.",
                "label": i % 2 if labelled else -1, "idx": i}


class InstructJaxTinySquad(tfds.core.GeneratorBasedBuilder):
  """Three rows with squad/v1.1's features, including the nested `answers` sequence."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "id": text, "title": text, "context": text, "question": text,
        "answers": tfds.features.Sequence({"text": text, "answer_start": np.int32})}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"id": f"q{i}", "title": "Cat_facts", "context": f"Cat {i} sleeps all day.",
                "question": f"What does cat {i} do?", "answers": {"text": ["sleeps", "sleeps all day"],
                                                                  "answer_start": [6, 6]}}


@pytest.fixture(scope="module")
def tiny_rte_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  InstructJaxTinyRte(data_dir=data_dir, file_format="array_record").download_and_prepare()
  InstructJaxTinySquad(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_data_source_through_the_rte_task(tiny_rte_dir):
  src = sources.TfdsSource("instruct_jax_tiny_rte", data_dir=tiny_rte_dir)
  task = tasks_lib.Task("tiny_rte", src, templates.load("nlu")["rte"], preprocess=tasks_lib.preprocess_rte,
                        options=("yes", "no"))
  assert task.num_examples("train") == 4
  assert src.label_names() == ["entailment", "not_entailment"]
  exs = render.render_split(task, "train", render.RenderConfig(template_ids=(1,)))
  by_idx = {ex["source_index"]: ex for ex in exs}
  record = src.load("train")[0]  # data_source order is TFDS's (shuffled at preparation)
  assert isinstance(record["sentence1"], str)
  want_answer = "yes" if record["label"] == 0 else "no"
  assert by_idx[0]["inputs"] == (f"Premise: {record['sentence1']}\nHypothesis: {record['sentence2']}\n"
                                 "Does the hypothesis follow from the premise?\n\nOPTIONS:\n- yes\n- no")
  assert by_idx[0]["targets"] == want_answer
  assert sorted(ex["targets"] for ex in exs) == ["no", "no", "yes", "yes"]
  # The unlabelled test split (label -1): the preprocessor drops every record, which is an error naming the split.
  with pytest.raises(sources.DataError, match="'tiny_rte' split 'test': its preprocessing dropped all"):
    render.render_split(task, "test", render.RenderConfig())


def test_tfds_squad_task_references_and_inversion(tiny_rte_dir):
  catalogue = flan2021.tasks(tiny_rte_dir)
  squad = catalogue["squad/v1.1"]
  # Same task definition as the catalogue's, on the tiny stand-in dataset ("test" reads "validation").
  task = tasks_lib.Task("tiny_squad", sources.TfdsSource("instruct_jax_tiny_squad", data_dir=tiny_rte_dir,
                                                         split_map={"test": "validation"}),
                        squad.templates, preprocess=squad.preprocess, metric=squad.metric)
  ex = render.render_split(task, "test", render.RenderConfig(template_ids=(2,)), n=1)[0]
  record = task.source.load("test")[0]
  assert ex["inputs"] == (f"Article about Cat facts:\n{record['context']}\n\nQ: {record['question']}\nA:")
  assert ex["targets"] == "sleeps" and ex["references"] == ["sleeps", "sleeps all day"]
  inverted = [t.id for t in task.templates if t.kind == "inverted"]
  ex = render.render_split(task, "test", render.RenderConfig(template_ids=tuple(inverted), inversion_rate=1.0), n=1)[0]
  assert ex["targets"] == record["question"] and "sleeps" in ex["inputs"]


def test_tfds_unprepared_dataset_error_names_dataset_and_dir(tmp_path):
  src = sources.TfdsSource("instruct_jax_tiny_rte", data_dir=str(tmp_path / "empty"))
  with pytest.raises(sources.DataError, match=r"'instruct_jax_tiny_rte'.*not readable from data_dir"):
    src.load("train")


# --- SuperNI ---------------------------------------------------------------------------------------------


def test_superni_task_files(shared_data):
  tasks = tasks_lib.superni_tasks(shared_data / "natural-instructions")
  assert len(tasks) == 8
  copa = tasks["niv2/task1393_superglue_copa_text_completion"]
  assert copa.num_examples("train") == 496 and copa.num_examples("test") == 100
  assert tasks["niv2/task648_answer_generation"].num_examples("train") == 281
  # task063 holds a bare NaN (in URL); it loads, and its fields are text.
  first_i = tasks["niv2/task063_first_i_elements"]
  assert first_i.num_examples("train") == 16
  raw = json.loads((shared_data / "natural-instructions/tasks/task063_first_i_elements.SUBSET.json").read_text())
  assert raw["URL"][0] != raw["URL"][0]  # NaN is not equal to itself
  ex = first_i.example("train", 0)
  assert ex["references"] == raw["Instances"][0]["output"]
  assert ex["definition"] == "".join(raw["Definition"])


def test_superni_test_split_matches_official_references(shared_data):
  ni = shared_data / "natural-instructions"
  refs = {}
  for line in (ni / "test_references.jsonl").read_text().splitlines():
    r = json.loads(line)
    refs.setdefault(r["task_id"], []).append(r)
  tasks = tasks_lib.superni_tasks(ni)
  test_names = {n.removeprefix("niv2/") for n in tasks_lib.superni_split(ni, "test")}
  checked = 0
  for name, task in tasks.items():
    short = name.removeprefix("niv2/")
    if short not in test_names:
      continue
    ours = task.source.load("test")
    official = refs[short]
    n = min(len(ours), len(official))
    assert [r["id"] for r in ours[:n]] == [r["id"] for r in official[:n]]
    assert [r["references"] for r in ours[:n]] == [r["references"] for r in official[:n]]
    checked += 1
  assert checked == 5


def test_superni_encoding_golden(shared_data):
  task = tasks_lib.superni_tasks(shared_data / "natural-instructions")["niv2/task1393_superglue_copa_text_completion"]
  ex = render.render_split(task, "test", render.RenderConfig(template_ids=(0,)), n=1)[0]
  t = task.source.task
  pos = t["positive_examples"]
  # The definition ends with "."; the inputs end with "cause"/"effect" and the outputs with "A"/"B", so Tk-Instruct's
  # collator adds a period to each of those lines.
  assert not pos[0]["input"].strip()[-1] in ".?!" and pos[0]["output"].strip() in ("A", "B")
  want = (f"Definition: {t['definition']}\n\n"
          f" Positive Example 1 -\nInput: {pos[0]['input']}.\n Output: {pos[0]['output']}.\n\n"
          f" Positive Example 2 -\nInput: {pos[1]['input']}.\n Output: {pos[1]['output']}.\n\n"
          "Now complete the following example -\n"
          "Input: The man fell unconscious. (A) The assailant struck the man in the head. (B) The assailant "
          "took the man's wallet., Question: cause.\nOutput: ")
  assert ex["inputs"] == want
  assert ex["targets"] == "A" and ex["references"] == ["A"] and ex["shots"] == 2


def test_superni_encoding_rules():
  pos = [{"input": "a", "output": "b", "explanation": "why"}] * 3
  neg = [{"input": "c", "output": "d", "explanation": "wrong"}]
  text, n = superni.encode("Copy the input", "x", positive_examples=pos, negative_examples=neg,
                           num_positive=1, num_negative=1, explanations=True)
  assert text == ("Definition: Copy the input.\n\n Positive Example 1 -\nInput: a.\n Output: b.\n Explanation: why.\n\n"
                  " Negative Example 1 -\nInput: c.\n Output: d.\n Explanation: wrong.\n\n"
                  "Now complete the following example -\nInput: x.\nOutput: ")
  assert n == 2
  # Lines that already end in punctuation are left alone; an empty input still gets its period (as Tk-Instruct).
  done = [{"input": "Is it? ", "output": "Yes!", "explanation": "(see above)"}]
  text, _ = superni.encode("Answer!", "", positive_examples=done, num_positive=1, explanations=True)
  assert text == ("Definition: Answer!\n\n Positive Example 1 -\nInput: Is it?\n Output: Yes!\n Explanation: (see above)\n\n"
                  "Now complete the following example -\nInput: .\nOutput: ")
  # Demonstrations stop as soon as the prompt would exceed the limit.
  text, n = superni.encode("Copy the input!", "x", positive_examples=pos, num_positive=3,
                           fits=lambda s: len(s) <= 140)
  assert n == 1 and text.startswith("Definition: Copy the input!\n\n") and len(text) <= 140


def test_superni_uses_the_first_definition_entry(tmp_path):
  path = tmp_path / "task8_two_definitions.json"
  path.write_text(json.dumps({"Definition": ["Say yes", "Say no"], "Instances": [{"id": "i0", "input": "x",
                                                                                  "output": ["yes"]}]}))
  assert superni.read_task(path)["definition"] == "Say yes"
  text, _ = superni.encode(superni.read_task(path)["definition"], "x")
  assert text.startswith("Definition: Say yes.\n\n")


def test_superni_missing_field(tmp_path):
  path = tmp_path / "task9_bad.json"
  path.write_text(json.dumps({"Definition": ["d"], "Instances": [{"id": "i0", "input": "x"}]}))
  with pytest.raises(sources.DataError, match=r"task9_bad\.json: Instances\[0\] \(id 'i0'\): missing field 'output'"):
    superni.read_task(path)


def test_tfds_preprocessors_on_records_shaped_like_data_source_rows():
  # Field names and label encodings of super_glue/boolq and anli/r1 (after bytes are decoded).
  boolq = {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1}
  assert tasks_lib.preprocess_boolq(boolq) == {"passage": "The sky is blue.", "question": "is the sky blue",
                                               "answer": "yes"}
  assert tasks_lib.preprocess_boolq({**boolq, "label": 0})["answer"] == "no"
  assert tasks_lib.preprocess_boolq({**boolq, "label": -1}) is None
  anli = {"uid": "u", "context": "A cat sat.", "hypothesis": "An animal sat.", "label": 0}
  assert [tasks_lib.preprocess_anli({**anli, "label": i})["answer"] for i in range(3)] == [
      "yes", "it is not possible to tell", "no"]
  task = flan2021.tasks()["anli/r1"]
  fields = {**tasks_lib.preprocess_anli(anli), "options": list(task.options)}
  inputs, _ = render.Renderer(task, render.RenderConfig())._fill(task.templates[1], fields, with_options=True)
  assert inputs == ("Premise: A cat sat.\nHypothesis: An animal sat.\nIs the hypothesis entailed, contradicted, "
                    "or neither?\n\nOPTIONS:\n- yes\n- it is not possible to tell\n- no")


def test_superni_instance_caps_are_config_keys(shared_data):
  import ml_collections
  from instruct_jax import configs
  config = configs.from_command_line(["--config=configs/base.py",
                                      f"--config.data_paths.superni_dir={shared_data / 'natural-instructions'}",
                                      "--config.data_paths.superni_train_instances=3",
                                      "--config.data_paths.superni_eval_instances=2"])
  assert isinstance(config.data_paths, ml_collections.ConfigDict)
  tasks = mixtures_lib.task_catalogue(tasks_lib.DataPaths.from_config(config.data_paths))
  copa = tasks["niv2/task1393_superglue_copa_text_completion"]
  assert copa.num_examples("train") == 3 and copa.num_examples("test") == 2
  assert [r["id"] for r in copa.source.load("test")] == [r["id"] for r in copa.source.load("train")[:2]]
  full = tasks_lib.superni_tasks(shared_data / "natural-instructions")["niv2/task1393_superglue_copa_text_completion"]
  assert full.num_examples("train") == 496 and full.num_examples("test") == 100


def test_a_split_without_labels_is_an_error_naming_it():
  unlabeled = [{"question": f"q{i}", "passage": "p", "idx": i, "label": -1} for i in range(4)]
  task = tasks_lib.Task(name="super_glue/boolq", source=sources.MemorySource({"test": unlabeled}),
                        templates=flan2021.tasks()["super_glue/boolq"].templates,
                        preprocess=tasks_lib.preprocess_boolq, options=("yes", "no"))
  with pytest.raises(sources.DataError, match="'super_glue/boolq' split 'test': its preprocessing dropped all"):
    render.render_split(task, "test", render.RenderConfig(), n=4)
