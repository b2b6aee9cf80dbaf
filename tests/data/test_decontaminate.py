"""N-gram decontamination: normalisation, exact planted overlaps, batch boundaries, every input format, the CLI."""
from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from instruct_jax.data import decontaminate as dc
from instruct_jax.data.sources import DataError

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared(*parts: str) -> pathlib.Path:
  path = SHARED.joinpath(*parts)
  if not path.exists():
    pytest.skip(f"shared test data not found at {path}")
  return path


def _filler(rng: random.Random, words: int) -> str:
  """Random words from a vocabulary no test sentence uses (all start with "q")."""
  return " ".join("q" + "".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(words))


def _jsonl(path: pathlib.Path, records: list[dict]) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


EVAL_TEXT = ("the committee decided after a long and heated debate that the old bridge over the river "
             "would be closed for repairs during the whole of next summer")


def test_normalise_case_punctuation_unicode_and_whitespace():
  assert dc.normalise("Hello, WORLD!") == ["hello", "world"]
  assert dc.normalise("don't stop: e.g. state-of-the-art (x)") == ["dont", "stop", "eg", "stateoftheart", "x"]
  # Unicode punctuation (P*) goes too, replaced by nothing; symbols outside P* and string.punctuation stay.
  assert dc.normalise("«Ça va?» — “quoted” ‘x’ …¿Qué?。") == ["ça", "va", "quoted", "x", "qué"]
  assert dc.normalise("mid—dash") == ["middash"]
  assert dc.normalise("a$b +c| 5€ ©") == ["ab", "c", "5€", "©"]  # ASCII symbols in string.punctuation go
  assert dc.normalise(" tabs\tand\nnew\u00a0lines\u2003 ") == ["tabs", "and", "new", "lines"]
  assert dc.normalise("") == [] and dc.normalise("?! ...") == []
  assert dc.normalise("ÉCOLE Straße") == ["école", "straße"]


def test_example_texts_of_each_record_kind():
  assert dc.example_texts({"instruction": "Do it.", "input": "", "output": "Done.", "n": 3}) == ["Do it.\n\nDone."]
  chat = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]}
  assert dc.example_texts(chat) == ["Hi there\nHello"]  # speaker labels left out
  sharegpt = {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
  assert dc.example_texts(sharegpt) == ["Q?\nA."]
  preference = {"prompt": [{"role": "user", "content": "P"}], "chosen": "C", "rejected": "R"}
  assert dc.example_texts(preference) == ["P\nC\nR"]
  self_instruct = {"instruction": "Add.", "instances": [{"input": "1 2", "output": "3"}, {"input": "", "output": "0"}]}
  assert dc.example_texts(self_instruct) == ["Add.\n1 2\n3", "Add.\n\n0"]
  assert dc.example_texts({"instruction": "Add.", "instances": []}) == ["Add."]  # no instance: the record itself


def _index(n: int = 13) -> dc.NgramIndex:
  return dc.NgramIndex.build({"bridges": [EVAL_TEXT, "short one"], "other": ["nothing in common with it"]}, n)


def test_planted_overlap_is_found_exactly_once():
  rng = random.Random(0)
  words = EVAL_TEXT.split()
  planted = " ".join(w.upper() + "," for w in words[5:18])  # 13 consecutive words, other case and punctuation
  texts = [_filler(rng, 40) for _ in range(3000)]
  texts[1234] = f"{_filler(rng, 10)} {planted}! {_filler(rng, 10)}"
  index = _index()
  assert index.set_sizes == {"bridges": 2, "other": 1} and index.too_short == {"bridges": 1, "other": 1}
  assert np.flatnonzero(index.contaminated(texts)).tolist() == [1234]
  sets = index.which_sets(texts)
  assert sets[1234] == frozenset({"bridges"}) and all(not s for i, s in enumerate(sets) if i != 1234)
  matches = index.find(texts)
  assert matches.text.tolist() == [1234] and matches.start.tolist() == [10]
  hits = index.eval_hits(matches.key)
  assert hits["bridges"].tolist() == [True, False] and hits["other"].tolist() == [False]
  assert index.overlaps(texts[1233:1235]).tolist() == [[False, False], [True, False]]


def test_twelve_shared_words_match_at_n12_but_not_n13():
  twelve = " ".join(EVAL_TEXT.split()[3:15])
  texts = [f"zz yy {twelve} xx ww", "unrelated words only here"]
  assert _index(13).contaminated(texts).tolist() == [False, False]
  assert _index(12).contaminated(texts).tolist() == [True, False]
  assert _index(12).find(texts).start.tolist() == [2]


def test_ngrams_do_not_cross_from_one_text_into_the_next():
  words = EVAL_TEXT.split()
  # Text i ends with the eval text's first 7 words and text i+1 starts with its next 6: together, one 13-gram.
  texts = ["alpha beta " + " ".join(words[:7]), " ".join(words[7:13]) + " gamma delta", " ".join(words[:13])]
  index = _index()
  assert index.contaminated(texts).tolist() == [False, False, True]
  assert index.contaminated(texts[:2]).tolist() == [False, False]
  assert index.contaminated([" ".join(words[:7] + words[7:13])]).tolist() == [True]


def test_superni_task_file_as_eval(tmp_path):
  task = _shared("natural-instructions", "tasks", "task1393_superglue_copa_text_completion.json")
  data = json.loads(task.read_text(encoding="utf-8"))
  instance = data["Instances"][3]["input"]
  rng = random.Random(1)
  records = [{"instruction": _filler(rng, 8), "output": _filler(rng, 20)} for _ in range(200)]
  records[77]["input"] = instance  # verbatim
  records[150]["instruction"] = data["Definition"][0]  # the task's Definition is not part of any eval example
  train = _jsonl(tmp_path / "train.jsonl", records)
  result = dc.report([train], [str(task)], 13)
  assert result["eval"][str(task)]["examples"] == len(data["Instances"]) == 496
  assert result["train"][train]["contaminated"] == 1
  assert [f["index"] for f in result["train"][train]["examples_found"]] == [77]
  assert result["train"][train]["examples_found"][0]["where"] == f"{train}:78"
  assert result["eval"][str(task)]["contaminated"] == 1
  index = dc.NgramIndex.build({"copa": dc.Source("copa", str(task), "superni").texts()})
  assert np.flatnonzero(index.eval_hits(index.find([instance]).key)["copa"]).tolist() == [3]


def test_self_instruct_seeds_as_training_expand_instances(tmp_path):
  seeds = _shared("self-instruct", "seed_tasks.jsonl")
  records = [json.loads(line) for line in seeds.read_text(encoding="utf-8").splitlines() if line.strip()]
  instances = sum(len(r["instances"]) for r in records)
  texts = dc.read_examples(str(seeds))[str(seeds)]
  assert len(texts) == instances == 175  # the seeds hold one instance each
  # Generated Self-Instruct tasks often hold several: each is an example.
  extended = [{**r, "instances": r["instances"] * (1 + i % 3)} for i, r in enumerate(records)]
  more = dc.read_examples(_jsonl(tmp_path / "extended.jsonl", extended))
  assert len(next(iter(more.values()))) == sum(len(r["instances"]) for r in extended) == 349
  first = records[0]
  assert texts[0] == "\n".join([first["id"], first["name"], first["instruction"], first["instances"][0]["input"],
                                first["instances"][0]["output"]])
  # An eval set holding one seed's instruction and output: exactly that seed's example is found.
  target = next(i for i, r in enumerate(records) if len(dc.normalise(r["instances"][0]["output"])) >= 13)
  index_of = sum(len(r["instances"]) for r in records[:target])
  evals = _jsonl(tmp_path / "eval.jsonl", [{"output": records[target]["instances"][0]["output"]}])
  result = dc.report([str(seeds)], [evals], 13)
  train = result["train"][str(seeds)]
  assert train["examples"] == instances
  assert [f["index"] for f in train["examples_found"]] == [index_of]
  assert result["eval"][evals] == {"examples": 1, "contaminated": 1, "too_short": 0, "by_train": {str(seeds): 1}}


def test_datasets_directory_parquet_and_arrow_sources(tmp_path):
  datasets = pytest.importorskip("datasets")
  rows = {"prompt": ["first prompt", EVAL_TEXT.upper(), "third"], "response": ["a", "b", "c"], "n": [1, 2, 3]}
  dsd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                              "test": datasets.Dataset.from_dict({"text": [EVAL_TEXT + "."]})})
  directory = tmp_path / "saved"
  dsd.save_to_disk(str(directory))
  assert [s.name for s in dc.open_sources(str(directory))] == [f"{directory}:train", f"{directory}:test"]
  assert dc.read_examples(f"{directory}:train") == {f"{directory}:train": ["first prompt\na", EVAL_TEXT.upper() + "\nb",
                                                                            "third\nc"]}
  single = tmp_path / "single"
  dsd["train"].save_to_disk(str(single))
  parquet = tmp_path / "rows.parquet"
  dsd["train"].to_parquet(str(parquet))
  arrow = next((directory / "train").glob("*.arrow"))
  result = dc.report([str(single), str(parquet), str(arrow)], [f"{directory}:test"], 13)
  for name in (str(single), str(parquet), str(arrow)):
    assert result["train"][name]["examples"] == 3 and result["train"][name]["contaminated"] == 1, name
    assert result["train"][name]["examples_found"][0]["where"] == f"{name}: row 1"
  assert result["eval"][f"{directory}:test"]["contaminated"] == 1
  with pytest.raises(DataError, match="splits"):
    dc.open_sources(f"{directory}:validation")
  with pytest.raises(DataError, match="save_to_disk"):
    dc.open_sources(str(tmp_path))


def test_json_list_and_jsonl_named_json(tmp_path):
  listed = tmp_path / "list.json"
  listed.write_text(json.dumps([{"q": "one"}, {"q": EVAL_TEXT}]), encoding="utf-8")
  lines = tmp_path / "lines.json"
  lines.write_text(json.dumps({"q": "one"}) + "\n" + json.dumps({"q": "two"}) + "\n", encoding="utf-8")
  assert dc.read_examples(str(listed)) == {str(listed): ["one", EVAL_TEXT]}
  assert dc.read_examples(str(lines)) == {str(lines): ["one", "two"]}
  assert [s.kind for s in dc.open_sources(str(listed)) + dc.open_sources(str(lines))] == ["json", "jsonl"]


def test_cli_writes_the_report(tmp_path):
  rng = random.Random(2)
  train = _jsonl(tmp_path / "train.jsonl", [{"instruction": _filler(rng, 8), "output": "x"} for _ in range(50)] +
                 [{"messages": [{"role": "user", "content": "Tell me: " + EVAL_TEXT}]}])
  evals = _jsonl(tmp_path / "eval.jsonl", [{"input": EVAL_TEXT, "output": "yes"}, {"input": "too short"}])
  out = tmp_path / "report.json"
  run = subprocess.run([sys.executable, "-m", "instruct_jax.data.decontaminate", f"--train={train}",
                        f"--eval={evals}", "--ngram=13", f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert run.returncode == 0, run.stderr
  assert "training source" in run.stdout and "1 (1.96%)" in run.stdout
  report = json.loads(out.read_text(encoding="utf-8"))
  assert set(report) == {"ngram", "normalisation", "train", "eval", "seconds"} and report["ngram"] == 13
  source = report["train"][train]
  assert {k: source[k] for k in ("examples", "contaminated", "too_short", "by_eval")} == {
      "examples": 51, "contaminated": 1, "too_short": 50, "by_eval": {evals: 1}}
  assert source["examples_found"] == [{"index": 50, "where": f"{train}:51", "eval": [evals],
                                       "ngram": " ".join(EVAL_TEXT.split()[:13])}]
  assert report["eval"][evals] == {"examples": 2, "contaminated": 1, "too_short": 1, "by_train": {train: 1}}
  assert isinstance(report["seconds"], float) and not (tmp_path / "report.json.tmp").exists()


def _cli_error(*args: str) -> str:
  run = subprocess.run([sys.executable, "-m", "instruct_jax.data.decontaminate", *args], cwd=ROOT,
                       capture_output=True, text=True)
  assert run.returncode == 2 and run.stderr.startswith("error: "), run.stderr
  return run.stderr


def test_bad_input_errors(tmp_path):
  good = _jsonl(tmp_path / "good.jsonl", [{"text": EVAL_TEXT}])
  assert "--ngram" in _cli_error(f"--train={good}", f"--eval={good}", "--ngram=0")
  with pytest.raises(DataError, match="nope.jsonl: no such file"):
    dc.report([str(tmp_path / "nope.jsonl")], [good], 13)
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"text": "fine"}\n\n{"text": "broken\n', encoding="utf-8")
  with pytest.raises(DataError, match=f"{bad}:3: malformed JSON line"):
    dc.report([str(bad)], [good], 13)
  listed = tmp_path / "numbers.jsonl"
  listed.write_text('{"a": "b"}\n[1, 2]\n', encoding="utf-8")
  with pytest.raises(DataError, match=f"{listed}:2: expected a JSON object, got list"):
    dc.read_examples(str(listed))
  other = tmp_path / "data.txt"
  other.write_text("hello\n", encoding="utf-8")
  with pytest.raises(DataError, match="unknown format '.txt'"):
    dc.open_sources(str(other))
  obj = tmp_path / "obj.json"
  obj.write_text('{"Definition": ["x"]}', encoding="utf-8")
  with pytest.raises(DataError, match="SuperNI task file"):
    dc.open_sources(str(obj))
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n", encoding="utf-8")
  with pytest.raises(DataError, match="empty"):
    dc.read_examples(str(empty))
  with pytest.raises(dc.errors.UserError, match="more than once"):
    dc.report([good], [good, good], 13)
