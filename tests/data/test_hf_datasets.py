"""Hugging Face datasets as tasks (config.data_paths.hf_datasets): the spec, the three layouts read into the records
the file sources give, splits, laziness, every error, the catalogues and the pipeline; a slow run through the CLIs."""
from __future__ import annotations

import json
import pathlib
import pickle
import sys
import tracemalloc
from collections.abc import Sequence

import datasets
import pytest

from instruct_jax import configs
from instruct_jax.data import chat
from instruct_jax.data import hf_datasets
from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import preferences
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib

ALPACA = [{"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "system": ""},
          {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be brief."},
          {"instruction": "Empty one.", "input": "", "output": "  ", "system": ""},
          {"instruction": "Name a colour.", "input": "", "output": "Blue.", "system": ""}]
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "I am fine"}, {"role": "user", "content": "how are you?"},
                {"role": "assistant", "content": "thanks, fine"}]
SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}
TINY = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tiny.py"


def _columns(records: list[dict]) -> dict[str, list]:
  return {k: [r.get(k) for r in records] for k in records[0]}


def _saved(path, records: list[dict] | dict[str, list[dict]]) -> str:
  """A dataset (records) or DatasetDict ({split: records}) written with save_to_disk at `path`."""
  if isinstance(records, dict):
    datasets.DatasetDict({s: datasets.Dataset.from_dict(_columns(r)) for s, r in records.items()}).save_to_disk(path)
  else:
    datasets.Dataset.from_dict(_columns(records)).save_to_disk(path)
  return str(path)


def _jsonl(path, records: list[dict]) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def _task(name: str, spec: str, **paths) -> tasks_lib.Task:
  return mixtures.task_catalogue(tasks_lib.DataPaths(hf_datasets={name: spec}, **paths))[name]


# --- The three layouts read as the file sources read them ------------------------------------------------


def test_instruction_dataset_with_a_column_map_gives_the_instruction_files_records(tmp_path):
  renamed = [{"prompt": r["instruction"], "context": r["input"], "response": r["output"], "system": r["system"],
              "id": i} for i, r in enumerate(ALPACA)]
  spec = f"{_saved(tmp_path / 'd', renamed)},columns=prompt:instruction+context:input+response:output"
  task = _task("mine", spec)
  from_file = tasks_lib.instruction_task("file", _jsonl(tmp_path / "a.jsonl", ALPACA))
  view = task.source.load("train")
  assert isinstance(view, Sequence) and not isinstance(view, list)
  assert list(view) == from_file.source.load("train") and len(view) == task.num_examples("train") == 3
  assert [task.example("train", i) for i in range(3)] == [from_file.example("train", i) for i in range(3)]
  assert task.cluster == "instructions" and task.templates == from_file.templates and task.metric == "rouge_l"
  assert task.source.stats.empty_outputs == 1 == from_file.source.stats.empty_outputs
  assert task.source.stats.problems == [f"{tmp_path / 'd'} (split train) row 2: empty output"]


def test_null_outputs_are_skipped_and_counted_and_an_all_empty_split_is_an_error(tmp_path):
  rows = [{"instruction": "a", "output": None}, {"instruction": "b", "output": "B"}, {"instruction": "c", "output": ""}]
  task = _task("mine", _saved(tmp_path / "d", rows))
  assert list(task.source.load("train")) == [{"instruction": "b", "input": "", "output": "B", "system": ""}]
  assert task.source.stats.empty_outputs == 2 and task.source.stats.records == 3
  empty = _task("nothing", _saved(tmp_path / "e", [{"instruction": "a", "output": " "}]))
  with pytest.raises(sources.DataError, match=r"every record's output is empty \(1, the first at .*row 0\)"):
    empty.num_examples("train")


def test_self_instruct_instances_give_one_record_per_instance(tmp_path):
  seeds = [{"instruction": "Sort.", "instances": [{"input": "3 1 2", "output": "1 2 3"}, {"input": "b a", "output": ""},
                                                   {"input": "y x", "output": "x y"}]},
           {"instruction": "Greet.", "instances": [{"input": "", "output": "Hello."}]}]
  task = _task("seeds", _saved(tmp_path / "d", seeds))
  from_file = sources.InstructionSource({"train": _jsonl(tmp_path / "s.jsonl", seeds)})
  assert list(task.source.load("train")) == from_file.load("train")
  assert [r["output"] for r in task.source.load("train")] == ["1 2 3", "x y", "Hello."]
  assert task.source.stats.empty_outputs == 1 and "row 0 instance 1: empty output" in task.source.stats.problems[0]
  none = _task("none", _saved(tmp_path / "n", [*seeds, {"instruction": "Nothing.", "instances": []}]))
  with pytest.raises(sources.DataError, match=r"row 2: field 'instances' must be a non-empty list"):
    none.num_examples("train")  # as the instruction files refuse such a record
  instance = {"input": "b a", "output": "a b", "id": "7"}
  extra = _task("extra", _saved(tmp_path / "x", [{"instruction": "Sort.", "instances": [instance]}]))
  with pytest.raises(sources.DataError, match=r"row 0 field 'instances': must be a non-empty list of \{input, output\} "
                                              r"strings \(no other fields\)"):
    extra.num_examples("train")


def test_chat_datasets_openai_and_sharegpt_give_the_chat_files_records_and_turns(tmp_path):
  fmt = chat.resolve_format("vicuna", None)
  other = [CONVERSATION[1], CONVERSATION[2]]
  messages = _saved(tmp_path / "m", [{"messages": CONVERSATION, "id": 0}, {"messages": other, "id": 1}])
  sharegpt = _saved(tmp_path / "s", [{"conversations": [{"from": SHAREGPT[m["role"]], "value": m["content"]}
                                                        for m in c]} for c in (CONVERSATION, other)])
  from_file = tasks_lib.chat_task("file", _jsonl(tmp_path / "c.jsonl", [{"messages": CONVERSATION},
                                                                        {"messages": other}]), chat_format=fmt)
  for spec in (messages, sharegpt):
    task = _task("talk", spec, chat_format=fmt)
    assert task.cluster == "chat" and list(task.source.load("train")) == from_file.source.load("train")
    assert task.example("train", 0) == from_file.example("train", 0)
    turns = tasks_lib.per_turn(task)  # the encoder-decoder's view: one record per assistant turn
    assert list(turns.source.load("train")) == tasks_lib.per_turn(from_file).source.load("train")
    assert [r["turn"] for r in turns.source.load("train")] == [2, 4, 1]
    assert task.num_examples("train") == 2  # the per-turn view did not change the task's own view


def test_preference_datasets_give_the_preference_files_records(tmp_path):
  explicit = [{"prompt": "Name a prime.", "chosen": "7", "rejected": "8", "system": "Be exact."},
              {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "Seven", "system": None}]
  user = {"role": "user", "content": "Hi"}
  conversational = [{"chosen": [user, {"role": "assistant", "content": "Hello!"}],
                     "rejected": [user, {"role": "assistant", "content": "Go away."}], "score": 1.5}]
  for name, records in (("explicit", explicit), ("implicit", conversational)):
    task = _task(name, _saved(tmp_path / name, records))
    from_file = preferences.PreferenceSource({"train": _jsonl(tmp_path / f"{name}.jsonl", records)}).load("train")
    got = list(task.source.load("train"))
    assert task.cluster == "preferences"
    assert [{k: v for k, v in r.items() if k != "where"} for r in got] == [
        {k: v for k, v in r.items() if k != "where"} for r in from_file]
    assert got[0]["where"] == f"{tmp_path / name} (split train) row 0"
  assert task.example("train", 0) == {"prompt": "Hi", "answer": "Hello!", "rejected": "Go away."}


# --- Splits, files and options ------------------------------------------------------------------------------


def test_a_dataset_dicts_splits_are_the_tasks_and_split_and_splits_map_them(tmp_path):
  d = _saved(tmp_path / "dd", {"train_sft": ALPACA[:2], "test_sft": ALPACA[3:], "extra": ALPACA[:1]})
  own = _task("own", d)
  assert own.source.splits == ("train_sft", "test_sft", "extra")
  assert own.num_examples("test_sft") == 1
  picked = _task("picked", f"{d},split=test_sft")
  assert picked.source.splits == ("train",) and picked.example("train", 0)["answer"] == "Blue."
  mapped = _task("mapped", f"{d},splits=train:train_sft+test:test_sft")
  assert mapped.source.splits == ("train", "test") and mapped.num_examples("train") == 2
  assert mapped.example("test", 0)["answer"] == "Blue."
  with pytest.raises(sources.DataError, match=r"hf_datasets\.mapped: no split 'validation'; the task has train, test"):
    mapped.num_examples("validation")
  with pytest.raises(sources.DataError, match=r"has no split 'dev' \(for the task's 'test' split\); its splits: "
                                              r"train_sft, test_sft, extra"):
    _task("bad", f"{d},splits=train:train_sft+test:dev")


def test_parquet_json_jsonl_and_arrow_files_per_split(tmp_path):
  ds = datasets.Dataset.from_dict(_columns(ALPACA))
  ds.to_parquet(str(tmp_path / "a.parquet"))
  ds.to_json(str(tmp_path / "a.jsonl"))
  (tmp_path / "a.json").write_text(json.dumps(ALPACA))  # a JSON list
  saved = _saved(tmp_path / "saved", ALPACA)
  arrow = next(iter((tmp_path / "saved").glob("*.arrow")))
  expected = sources.InstructionSource({"train": _jsonl(tmp_path / "b.jsonl", ALPACA)}).load("train")
  for path in (tmp_path / "a.parquet", tmp_path / "a.jsonl", tmp_path / "a.json", arrow):
    assert list(_task("one", str(path)).source.load("train")) == expected, path
  task = _task("files", f"train={tmp_path / 'a.parquet'},test={tmp_path / 'a.json'},validation={saved}")
  assert task.source.splits == ("train", "test", "validation")
  assert all(list(task.source.load(s)) == expected for s in task.source.splits)


def test_the_config_key_parses_and_reaches_the_catalogue(tmp_path):
  d = _saved(tmp_path / "d", ALPACA)
  config = configs.from_command_line([f"--config={TINY}", f"--config.data_paths.hf_datasets.mine={d},"
                                      "columns=system:-", "--config.data.mixture=hf_datasets"])
  paths = tasks_lib.DataPaths.from_config(config.data_paths)
  assert paths.hf_datasets == {"mine": f"{d},columns=system:-"}
  assert hf_datasets.parse_spec("mine", paths.hf_datasets["mine"]) == hf_datasets.Spec(
      name="mine", path=d, columns={"system": "-"})
  assert mixtures.task_catalogue(paths)["mine"].example("train", 1)["prompt"] == "Say hi."  # the system column left out


def test_the_catalogues_hold_the_tasks_in_their_clusters_mixture_and_in_hf_datasets(tmp_path):
  paths = tasks_lib.DataPaths(
      instruction_files={"file": _jsonl(tmp_path / "a.jsonl", ALPACA)},
      hf_datasets={"inst": _saved(tmp_path / "i", ALPACA),
                   "pairs": _saved(tmp_path / "p", [{"prompt": "Q", "chosen": "A", "rejected": "B"}] * 5)})
  tasks, mixes = mixtures.catalogues(paths)
  assert mixes["hf_datasets"].members == ("inst", "pairs")
  assert mixes["instructions"].members == ("file", "inst") and mixes["preferences"].members == ("pairs",)
  rates = mixtures.task_rates("hf_datasets", tasks, mixes)
  assert rates == pytest.approx({"inst": 3 / 8, "pairs": 5 / 8})  # examples-proportional: 3 kept rows and 5 pairs
  with pytest.raises(sources.DataError, match=r"hf_datasets\.hf_datasets: the name 'hf_datasets' is taken by a "
                                              "mixture"):
    mixtures.task_catalogue(tasks_lib.DataPaths(hf_datasets={"hf_datasets": str(tmp_path / "i")}))


# --- Laziness and pickling ------------------------------------------------------------------------------------


def test_a_large_dataset_is_read_by_row_without_copying_it_into_python(tmp_path):
  n = 200_000
  datasets.Dataset.from_dict({"instruction": [f"Repeat {i}." for i in range(n)],
                              "output": ["" if i % 4 == 0 else f"{i} {i}" for i in range(n)]}).save_to_disk(
                                  tmp_path / "big")
  tracemalloc.start()
  try:
    task = _task("big", str(tmp_path / "big"))
    view = task.source.load("train")
    size, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert len(view) == n * 3 // 4 and task.source.stats.empty_outputs == n // 4
  # 150,000 records as Python dicts would take tens of MB; the view holds the kept-row index (8 bytes a row).
  assert peak < 8_000_000, (size, peak)
  assert view[0]["output"] == "1 1" and view[-1]["instruction"] == f"Repeat {n - 1}."
  assert view[100_000] == {"instruction": f"Repeat {100_000 * 4 // 3 + 1}.", "input": "",
                           "output": f"{100_000 * 4 // 3 + 1} {100_000 * 4 // 3 + 1}", "system": ""}
  with pytest.raises(IndexError):
    view[len(view)]


def test_views_and_sources_pickle_for_grain_workers(tmp_path):
  task = _task("talk", _saved(tmp_path / "m", [{"messages": CONVERSATION}] * 3))
  view = task.source.load("train")
  again = pickle.loads(pickle.dumps(view))
  assert len(again) == 3 and again[2] == view[2]
  source = pickle.loads(pickle.dumps(tasks_lib.per_turn(task).source))
  assert [r["turn"] for r in source.load("train")] == [2, 4] * 3


# --- Errors -----------------------------------------------------------------------------------------------------


def test_a_hub_id_says_how_to_download_it(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(sources.DataError) as e:
    hf_datasets.parse_spec("alpaca", "tatsu-lab/alpaca")
  message = str(e.value)
  assert "config.data_paths.hf_datasets.alpaca=tatsu-lab/alpaca" in message and "offline" in message
  assert "datasets.load_dataset('tatsu-lab/alpaca').save_to_disk('DIR')" in message
  assert "config.data_paths.hf_datasets.alpaca=DIR" in message
  with pytest.raises(sources.DataError, match=r"nothing/here/x: no such file or directory"):
    hf_datasets.parse_spec("x", "nothing/here/x")


@pytest.mark.parametrize("spec,message", [
    ("{d},colums=a:instruction", r"hf_datasets\.x={d},colums=a:instruction: colums=a:instruction: 'colums' is not an "
                                 r"option \(split, splits, columns, kind\) \(did you mean columns=\?\), so it names "
                                 r"the file of split 'colums', and a:instruction is not a file"),
    ("train={d}/none.parquet", r"train={d}/none\.parquet: 'train' is not an option .* and {d}/none\.parquet is not a "
                               "file"),
    ("{d},columns=response", r"columns=response: expected columns=A:B"),
    ("{d},split=train,splits=a:b", r"give split= or splits=, not both"),
    ("{d},kind=pairs", r"kind=pairs: expected one of instructions, chat, preferences"),
    ("{d},{d}", r"is not KEY=VALUE"),
])
def test_malformed_specs_name_the_config_key(tmp_path, spec, message):
  d = str(tmp_path)
  with pytest.raises(sources.DataError, match=message.replace("{d}", d)):
    hf_datasets.parse_spec("x", spec.replace("{d}", d))


def test_a_directory_or_file_that_is_no_dataset_is_refused(tmp_path):
  (tmp_path / "plain").mkdir()
  with pytest.raises(sources.DataError, match=r"plain is a directory, but not one written by Dataset.save_to_disk"):
    hf_datasets.parse_spec("x", str(tmp_path / "plain"))
  (tmp_path / "a.csv").write_text("a,b\n")
  with pytest.raises(sources.DataError, match=r"a\.csv: a dataset file ends with one of \.parquet, \.json"):
    hf_datasets.parse_spec("x", str(tmp_path / "a.csv"))
  (tmp_path / "bad.parquet").write_text("not parquet")
  with pytest.raises(sources.DataError, match=r"hf_datasets\.x: .*bad\.parquet could not be read as a dataset"):
    hf_datasets.HFDatasetSource("x", str(tmp_path / "bad.parquet"))
  single = _saved(tmp_path / "single", ALPACA)
  with pytest.raises(sources.DataError, match=r"holds one dataset, not a DatasetDict"):
    _task("x", f"{single},split=train")


def test_column_maps_name_the_key_and_list_the_columns(tmp_path):
  d = _saved(tmp_path / "dolly", [{"instruction": "Summarise.", "context": "A long text.", "response": "Short.",
                                   "category": "summarization"}])
  columns = r"has columns instruction, context, response, category"
  with pytest.raises(sources.DataError, match=rf"hf_datasets\.dolly: columns=answer:output: no column 'answer'; .*"
                                              rf"{columns}"):
    _task("dolly", f"{d},columns=answer:output")
  with pytest.raises(sources.DataError, match=rf"columns=response:reply: 'reply' is not a field instruct_jax reads "
                                              rf"\(fields: chosen, conversations, input, .*\); .*{columns}"):
    _task("dolly", f"{d},columns=response:reply")
  with pytest.raises(sources.DataError, match=r"columns=response:instruction: .* already has a column 'instruction'"):
    _task("dolly", f"{d},columns=response:instruction")
  with pytest.raises(sources.DataError, match=rf"the columns fit no layout: map them onto our fields with columns="
                                              rf"COLUMN:FIELD \(e\.g\. columns=response:output\+context:input\); "
                                              rf".*{columns}; the layouts: instructions: instruction \+ output"):
    _task("dolly", d)
  with pytest.raises(sources.DataError, match=rf"column 'context' looks like the examples' input, and instruction "
                                              rf"records read theirs from 'input' .*: map it \(columns=context:input\) "
                                              rf"or leave it out \(columns=context:-\); .*{columns}"):
    _task("dolly", f"{d},columns=response:output")
  mapped = _task("dolly", f"{d},columns=response:output+context:input")
  assert list(mapped.source.load("train")) == [{"instruction": "Summarise.", "input": "A long text.",
                                                "output": "Short.", "system": ""}]
  dropped = _task("dolly", f"{d},columns=response:output+context:-")
  assert dropped.source.load("train")[0]["input"] == ""


def test_alpacas_text_column_is_an_extra_and_an_input_like_one_beside_input_is_refused(tmp_path):
  alpaca = [{**r, "text": f"### Instruction: {r['instruction']} ### Response: {r['output']}"} for r in ALPACA]
  task = _task("alpaca", _saved(tmp_path / "a", alpaca))  # tatsu-lab/alpaca's columns
  assert task.source.load("train")[0] == ALPACA[0]
  d = _saved(tmp_path / "q", [{**r, "question": "Why?"} for r in ALPACA])
  with pytest.raises(sources.DataError, match=r"column 'question' looks like the examples' input.*: leave it out "
                                              r"\(columns=question:-\), or map it onto input \(columns=question:input"
                                              r"\+input:-\)"):
    _task("q", d)
  assert _task("q", f"{d},columns=question:input+input:-").source.load("train")[0]["input"] == "Why?"


def test_ambiguous_columns_are_refused_until_kind_chooses(tmp_path):
  rows = [{"prompt": "Hi", "chosen": "Hello!", "rejected": "No.", "messages": [
      {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "score_chosen": 8.0}]
  d = _saved(tmp_path / "uf", rows)  # HuggingFaceH4/ultrafeedback_binarized's columns
  with pytest.raises(sources.DataError, match=r"the columns fit several layouts \(chat, preferences\): choose one with "
                                              r"kind=; .*has columns prompt, chosen, rejected, messages, score_chosen"):
    _task("uf", d)
  assert _task("uf", f"{d},kind=preferences").cluster == "preferences"
  assert _task("uf", f"{d},kind=chat").source.load("train")[0]["turn"] == 1
  with pytest.raises(sources.DataError, match=r"kind=instructions, but the columns do not fit it"):
    _task("uf", f"{d},kind=instructions")


def test_wrong_types_name_the_row_and_field(tmp_path):
  d = _saved(tmp_path / "ints", [{"question": "a", "answer": None}, {"question": "b", "answer": 7}])
  task = _task("ints", f"{d},columns=question:instruction+answer:output")
  with pytest.raises(sources.DataError, match=r"ints \(split train\) row 1 field 'output' \(column 'answer'\): must be "
                                              r"a string, but the dataset's column holds int64 \(config\.data_paths\."
                                              r"hf_datasets\.ints\)"):
    task.num_examples("train")
  flat = _task("flat", _saved(tmp_path / "flat", [{"messages": "Hello"}]))
  with pytest.raises(sources.DataError, match=r"row 0 field 'messages': must be a list of \{role, content\} messages"):
    flat.num_examples("train")
  nulls = _task("nulls", _saved(tmp_path / "nulls", [{"instruction": "a", "output": "A"},
                                                     {"instruction": None, "output": "B"}]))
  with pytest.raises(sources.DataError, match=r"nulls \(split train\) row 1: missing field 'instruction'"):
    nulls.num_examples("train")


def test_bad_rows_raise_in_strict_mode_and_are_dropped_and_counted_in_lenient_mode(tmp_path):
  broken = [CONVERSATION[1], {"role": "assistant", "content": ""}]
  d = _saved(tmp_path / "m", [{"messages": CONVERSATION}, {"messages": broken}, {"messages": CONVERSATION}])
  fmt = chat.resolve_format("vicuna", None)
  strict = _task("talk", d, chat_format=fmt)
  assert strict.num_examples("train") == 3 and strict.example("train", 0)["answer"] == "thanks, fine"
  with pytest.raises(chat.ChatError, match=r"m \(split train\) row 1: messages\[1\]: field 'content' must be a "
                                           "non-empty string"):
    strict.example("train", 1)
  lenient = _task("talk", d, chat_format=fmt, strict=False)
  assert lenient.example("train", 1) is None and lenient.example("train", 1) is None
  assert lenient.example("train", 2)["answer"] == "thanks, fine"
  assert lenient.source.stats.bad_records == 1 and "row 1: messages[1]" in lenient.source.stats.problems[0]
  assert lenient.preprocess.fmt == fmt  # the pipeline still finds the chat format to check its end of turn
  pairs = _task("pairs", _saved(tmp_path / "p", [{"prompt": "Q", "chosen": "A", "rejected": " "}]))
  with pytest.raises(preferences.PreferenceError, match=r"p \(split train\) row 0: field 'rejected' is empty"):
    pairs.example("train", 0)
  renamed = _task("renamed", f"{_saved(tmp_path / 'r', [{'q': 'Q', 'a': 'A', 'b': ''}])},columns=q:prompt+a:chosen+"
                             "b:rejected")
  with pytest.raises(preferences.PreferenceError, match=r"field 'rejected' is empty \(fields are after config\."
                                                        r"data_paths\.hf_datasets\.renamed's columns=q->prompt\+a->"
                                                        r"chosen\+b->rejected\)"):
    renamed.example("train", 0)


# --- The pipeline ------------------------------------------------------------------------------------------


def test_the_pipeline_trains_on_the_hf_datasets_mixture(tmp_path, spm_tokenizer):
  paths = tasks_lib.DataPaths(hf_datasets={"mine": _saved(tmp_path / "d", ALPACA),
                                           "pairs": _saved(tmp_path / "p", [{"prompt": "Q", "chosen": "A",
                                                                             "rejected": "B"}])})
  tasks, mixes = mixtures.catalogues(paths)
  cfg = pipeline.PipelineConfig(mixture="hf_datasets", batch_size=2, inputs_length=64, targets_length=32,
                                model_kind="decoder")
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes)
  batch = next(iter(pipe))
  assert batch["decoder_target_tokens"].shape == (2, 96) and batch["decoder_loss_weights"].sum() > 0
  assert pipe.task_names == ["mine", "pairs"]
  answers = {pipe.examples[i]["targets"] for i in range(8)}
  assert answers <= {"5", "Hi!", "Blue.", "A"} and len(answers) > 1


def test_an_encoder_decoder_reads_each_assistant_turn_of_a_chat_dataset(tmp_path, spm_tokenizer):
  fmt = chat.resolve_format("vicuna", spm_tokenizer)
  paths = tasks_lib.DataPaths(hf_datasets={"talk": _saved(tmp_path / "m", [{"messages": CONVERSATION}])},
                              chat_format=fmt)
  tasks, mixes = mixtures.catalogues(paths)
  cfg = pipeline.PipelineConfig(mixture="hf_datasets", batch_size=2, inputs_length=128, targets_length=32,
                                pack=False, shuffle=False)
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes)
  assert [pipe.examples[i]["targets"] for i in range(2)] == ["I am fine", "thanks, fine"]
  assert next(iter(pipe))["encoder_input_tokens"].shape == (2, 128)


# --- End to end through the CLIs (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_train_and_evaluate_a_saved_dataset_dict(tmp_path):
  from tests.test_train import _run  # pylint: disable=g-import-not-at-top  (the slow tests' helper)
  rows = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w, "source": "made here"}
          for w in ["apple", "boat", "cloud", "drum", "egg", "fern", "goat", "hill"] * 3]
  d = _saved(tmp_path / "dd", {"train": rows, "test": rows[:4]})
  work, evaluated = tmp_path / "w", tmp_path / "eval"
  _run([sys.executable, "-m", "instruct_jax.train", f"--config={TINY}:decoder", f"--workdir={work}",
        "--config.total_steps=2", "--config.checkpoint_every=0", f"--config.data_paths.hf_datasets.mine={d}",
        "--config.data.mixture=hf_datasets", "--config.eval.tasks=('mine',)", "--config.eval.held_out_cluster=",
        "--config.eval.num_examples=2", "--config.eval.before_training=False"])
  predictions = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
  assert predictions and {p["references"][0] for p in predictions} <= {"apple", "boat", "cloud", "drum"}
  _run([sys.executable, "-m", "instruct_jax.evaluate", f"--workdir={work}", "--tasks=mine", "--num_examples=2",
        f"--output_dir={evaluated}"])
  rows = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
  assert [r["inputs"] for r in rows] == [p["inputs"] for p in predictions[:2]]
  assert "mine" in (evaluated / "metrics.json").read_text()
