"""End-to-end runs of every synthetic method: scripted backend, real local HTTP server with faults,
resume after torn writes, extension to a larger N, and the output contract."""
import json
import os
import shutil
import socket

import pytest

from instruct_jax.synthetic import backtranslation, curation, evol_instruct, orca, self_instruct
from instruct_jax.lm.backends import GenParams, ScriptedBackend
from instruct_jax.lm.model import ModelBackend
from instruct_jax.lm.openai import OpenAIBackend
from instruct_jax.synthetic.records import read_jsonl, validate_record
from instruct_jax.synthetic.runner import ResumeError, RunDir

from tests.synthetic.fakes import TOPICS, FakeLM, FakeOpenAIServer, every, scripted_backend

SEED_TASKS = [
    ("Suggest a name for a cafe that also sells books.", "", "The Reading Cup", False),
    ("Convert the distance from miles to kilometres.", "26.2 miles", "42.2 km", False),
    ("Classify the review as positive or negative.", "Loved every page.", "Positive", True),
    ("Is the sentence grammatical? Answer yes or no.", "She go home.", "No", True),
    ("Explain what a leap year is to a child.", "", "Every four years February gets an extra day.",
     False),
    ("List three uses for an empty glass jar.", "", "Storing spices, growing herbs, a pencil cup.",
     False),
    ("Give the opposite of the word.", "ancient", "modern", False),
    ("Decide whether the number is even or odd.", "17", "Odd", True),
    ("Rewrite the sentence in the passive voice.", "The cat chased the mouse.",
     "The mouse was chased by the cat.", False),
    ("Plan a simple three-course dinner for four people.", "", "Soup, roast chicken, fruit salad.",
     False),
    ("Summarize the story in one sentence.", "A fox tried to reach grapes, failed, and called "
     "them sour.", "A fox who cannot reach grapes pretends not to want them.", False),
    ("Tell whether the statement is a fact or an opinion.", "Paris is in France.", "Fact", True),
]
PROVENANCE_OF_BACKEND = ("backend", "model", "backward_backend", "backward_model")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  paths = {k: str(d / f"{k}.jsonl") for k in ("seeds", "queries", "texts", "pairs", "forum",
                                              "wiki")}
  _write(paths["seeds"], [{"id": f"seed_{i}", "instruction": ins, "is_classification": c,
                           "instances": [{"input": inp, "output": out}]}
                          for i, (ins, inp, out, c) in enumerate(SEED_TASKS)])
  colls = ["cot", "niv2", "t0", "flan2021"]
  _write(paths["queries"], [{"id": f"q{i}", "collection": colls[i % 4], "task": f"task{i % 7}",
                             "instruction": f"Question {i}: what is notable about {TOPICS[i % 30]}?",
                             "input": f"Context {i}." if i % 3 else "",
                             "multiple_choice": i % 2 == 0} for i in range(50)])
  _write(paths["texts"], [{"id": f"t{i}", "text": f"{TOPICS[i % 30].capitalize()} matter for "
                                                  f"reason number {i}, explained in full."}
                          for i in range(30)])
  _write(paths["pairs"], [{"instruction": f"Tell me about {t}.", "output": f"{t} is a topic."}
                          for t in TOPICS[:6]])
  asks = ["How do {} work?", "What should a beginner know before trying {}?",
          "Why do people disagree about {}?", "Which mistakes are common with {}, and why?",
          "Give me a short history of {}.", "Can you compare two schools of thought on {}?"]
  forum = []
  for i in range(40):
    topic = TOPICS[i % 30]
    out = f"Answer {i} about {topic}: see [the guide](http://x.org/{i}) for details."
    if i % 5 == 0:
      out = f"I think answer {i} is right about {topic}."
    if i % 7 == 0:
      out = "too short"
    ask = asks[i % 6].format(topic) if i % 9 else asks[(i - 1) % 6].format(TOPICS[(i - 1) % 30])
    forum.append({"id": f"f{i}", "instruction": ask, "output": out, "score": i % 12})
  _write(paths["forum"], forum)
  _write(paths["wiki"], [{"instruction": f"Describe {TOPICS[i]} for an encyclopedia entry "
                                         f"number {i}.",
                          "output": f"{TOPICS[i]} are described here at length, part {i}.",
                          "score": 5} for i in range(12)])
  return paths


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")


def _config(method, inputs, n=None):
  if method == "self_instruct":
    return self_instruct.SelfInstructConfig(inputs["seeds"], n or 24, requests_per_step=4)
  if method == "evol_instruct":
    return evol_instruct.EvolConfig(inputs["seeds"], n or 12, rounds=3, chunk_size=5)
  if method == "orca":
    return orca.OrcaConfig(inputs["queries"], n or 40, chunk_size=16)
  if method == "backtranslation":
    return backtranslation.BacktranslationConfig(inputs["texts"], n or 30, seed_data=inputs["pairs"],
                                                 min_score=4, chunk_size=8)
  return curation.CurationConfig((f"forum={inputs['forum']}", inputs["wiki"]), n or 16,
                                 min_output_chars=20, min_source_score=2, lm_rating=True,
                                 chunk_size=8)


MODULES = {"self_instruct": self_instruct, "evol_instruct": evol_instruct, "orca": orca,
           "backtranslation": backtranslation, "curation": curation}
METHODS = sorted(MODULES)
# Filter reasons each method's run must show (the fake LM produces them on purpose).
EXPECTED_REASONS = {
    "self_instruct": {"instructions": {"kept", "rouge_too_similar", "blacklisted_word",
                                       "write_a_program", "starts_with_punctuation", "too_short"},
                      "tasks": {"kept", "conflicting_outputs"}},
    "evol_instruct": {"evolutions": {"kept", "copied_prompt_markers", "no_information_gain",
                                     "sorry_short_response"}},
    "orca": {"responses": {"kept"}},
    "backtranslation": {"augmentation": {"kept", "empty_instruction"},
                        "curation_iteration_1": {"kept", "unparsable", "below_min_score"}},
    "curation": {"quality_forum": {"kept", "first_person", "output_too_short", "low_source_score"},
                 "selection": {"kept", "unparsable_rating", "below_min_lm_score",
                               "near_duplicate"}},
}


def _run(method, inputs, backend, out, n=None):
  return MODULES[method].run(_config(method, inputs, n), backend, str(out))


def _records(out, method):
  return [r for _, r in read_jsonl(os.path.join(str(out), f"{method}.jsonl"))]


def _content(records):
  return [r | {"provenance": {k: v for k, v in r["provenance"].items()
                              if k not in PROVENANCE_OF_BACKEND}} for r in records]


def _dead_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.mark.parametrize("method", METHODS)
def test_scripted_and_http_runs_agree(method, inputs, tmp_path, monkeypatch):
  scripted = _run(method, inputs, scripted_backend(), tmp_path / "scripted")
  records = _records(tmp_path / "scripted", method)
  assert records and scripted["records_new"] == len(records)
  assert len({r["id"] for r in records}) == len(records)
  for r in records:
    validate_record(r, method)
    assert r["provenance"]["method"] == method and r["provenance"]["prompt_version"]
  for stage, reasons in EXPECTED_REASONS[method].items():
    assert reasons <= set(scripted["counts"][stage]), (stage, scripted["counts"][stage])

  monkeypatch.setenv("SYNTH_E2E_KEY", "sk-e2e-secret")
  with FakeOpenAIServer(faults=every(5, 7, 11), slow_s=1.0, api_key="sk-e2e-secret") as server:
    http = OpenAIBackend(server.url, "fake-model", api_key_env="SYNTH_E2E_KEY", concurrency=4,
                         timeout_s=0.5, backoff_s=0.01)
    report = _run(method, inputs, http, tmp_path / "http")
  assert server.faults["429"] > 0 and server.faults["500"] > 0 and server.faults["slow"] > 0
  # (>=: on a loaded machine an ordinary answer may also time out and be retried)
  assert http.retries_done >= server.faults["429"] + server.faults["500"] + server.faults["slow"]
  assert _content(_records(tmp_path / "http", method)) == _content(records)
  assert report["counts"] == scripted["counts"]
  for root, _, files in os.walk(tmp_path / "http"):
    for name in files:
      assert "sk-e2e-secret" not in open(os.path.join(root, name), encoding="utf-8").read()

  # A re-run answers everything from the cache: the server is gone and nothing is sent.
  offline = OpenAIBackend(_dead_url(), "fake-model", max_retries=0)
  again = _run(method, inputs, offline, tmp_path / "http")
  assert again["records_new"] == 0 and again["cache_misses"] == 0
  assert again["records_replayed"] == len(records)


@pytest.mark.parametrize("method", METHODS)
def test_torn_writes_resume_to_identical_output(method, inputs, tmp_path):
  _run(method, inputs, scripted_backend(), tmp_path / "ref")
  ref = open(tmp_path / "ref" / f"{method}.jsonl", "rb").read()
  shutil.copytree(tmp_path / "ref", tmp_path / "cut")
  # As if killed mid-way: the output loses its last third and ends in half a line; the cache
  # loses its last quarter, also mid-line.
  for rel, keep in ((f"{method}.jsonl", 0.66), ("cache/requests.jsonl", 0.75)):
    path = tmp_path / "cut" / rel
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
  report = _run(method, inputs, scripted_backend(), tmp_path / "cut")
  assert report["records_new"] > 0 and report["cache_misses"] > 0
  assert (tmp_path / "cut" / f"{method}.jsonl").read_bytes() == ref


@pytest.mark.parametrize("method", METHODS)
def test_larger_n_continues_the_run(method, inputs, tmp_path):
  full = _config(method, inputs).num_instructions
  small = _run(method, inputs, scripted_backend(), tmp_path / "grow", n=full // 2)
  grown = _run(method, inputs, scripted_backend(), tmp_path / "grow", n=full)
  _run(method, inputs, scripted_backend(), tmp_path / "fresh", n=full)
  assert grown["records_replayed"] == small["records_total"] > 0
  assert grown["records_new"] > 0
  assert ((tmp_path / "grow" / f"{method}.jsonl").read_bytes() ==
          (tmp_path / "fresh" / f"{method}.jsonl").read_bytes())


def test_changed_settings_or_records_are_refused(inputs, tmp_path):
  out = tmp_path / "si"
  self_instruct.run(_config("self_instruct", inputs), scripted_backend(), str(out))
  changed = self_instruct.SelfInstructConfig(inputs["seeds"], 24, requests_per_step=4, seed=1)
  with pytest.raises(ResumeError, match="seed: was 0, now 1"):
    self_instruct.run(changed, scripted_backend(), str(out))
  with pytest.raises(ResumeError, match="model: was 'fake-lm', now 'other'"):
    self_instruct.run(_config("self_instruct", inputs), scripted_backend("other"), str(out))
  path = out / "self_instruct.jsonl"
  lines = path.read_text(encoding="utf-8").splitlines()
  first = json.loads(lines[0])
  first["output"] = "tampered"
  path.write_text("\n".join([json.dumps(first)] + lines[1:]) + "\n", encoding="utf-8")
  with pytest.raises(ResumeError, match=first["id"]):
    self_instruct.run(_config("self_instruct", inputs), scripted_backend(), str(out))


def test_two_runs_cannot_share_an_out_dir(tmp_path):
  first = RunDir(str(tmp_path), "x", {"a": 1})
  with pytest.raises(ResumeError, match="another run is writing"):
    RunDir(str(tmp_path), "x", {"a": 1})
  first.close()
  RunDir(str(tmp_path), "x", {"a": 1}).close()


def test_model_backend_runs_a_method(inputs, tmp_path):
  lm = FakeLM()
  calls = []

  def text_only(prompt, params):  # what a decoder returns: text, no finish reason
    answer = lm.complete(prompt, params)
    return getattr(answer, "text", answer)

  def generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed):
    calls.append(len(prompts))
    params = GenParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       seed=seed)
    return [text_only(p, params) for p in prompts]

  model = ModelBackend(generate_fn, model="tiny-decoder", batch_size=3)
  _run("self_instruct", inputs, model, tmp_path / "model")
  _run("self_instruct", inputs, ScriptedBackend(text_only, lm.chat), tmp_path / "scripted")
  got = _records(tmp_path / "model", "self_instruct")
  assert got and max(calls) == 3
  assert {r["provenance"]["backend"] for r in got} == {"model"}
  assert _content(got) == _content(_records(tmp_path / "scripted", "self_instruct"))


def test_real_seed_tasks(shared_data, tmp_path):
  path = str(shared_data / "self-instruct" / "seed_tasks.jsonl")
  seeds = self_instruct.load_seed_tasks(path)
  assert len(seeds) == 175 and sum(s.is_classification for s in seeds) == 26
  config = self_instruct.SelfInstructConfig(path, 16, requests_per_step=4)
  report = self_instruct.run(config, scripted_backend(), str(tmp_path))
  assert report["instructions_in_pool"] == 16 and report["records_total"] > 0


def test_bad_inputs_name_file_line_and_field(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"instruction": "ok", "instances": []}\n{"instances": []}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'instruction'"):
    self_instruct.load_seed_tasks(str(bad))
  bad.write_text('{"collection": "alpaca", "task": "t", "instruction": "x"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'collection' must be one of"):
    orca.load_queries(str(bad), ["cot", "niv2"])
  bad.write_text('{"instruction": "x", "output": "y", "score": "high"}\n', encoding="utf-8")
  with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'score' must be a number"):
    curation.load_source("s", str(bad))


def test_output_is_readable_by_the_data_pipeline(inputs, tmp_path):
  sources = pytest.importorskip("instruct_jax.data.sources")
  _run("orca", inputs, scripted_backend(), tmp_path)
  path = str(tmp_path / "orca.jsonl")
  loaded = sources.InstructionSource({"train": path}).load("train")
  ours = _records(tmp_path, "orca")
  assert [{k: r[k] for k in ("instruction", "input", "output", "system")} for r in ours] == loaded
  assert any(r["system"] for r in loaded)


def test_orca_sampling_is_stratified_and_respects_collections(inputs, tmp_path):
  p = orca.prompt_files.load("orca")
  # One task with 40 queries and four with one each: drawing a task first reaches the small
  # tasks early, where drawing queries uniformly would leave them spread over all 44 draws.
  rows = [{"id": f"big{i}", "collection": "niv2", "task": "big", "instruction": f"b{i}"}
          for i in range(40)]
  rows += [{"id": f"small{i}", "collection": "t0", "task": f"small{i}", "instruction": f"s{i}"}
           for i in range(4)]
  _write(str(tmp_path / "q.jsonl"), rows)
  queries = orca.load_queries(str(tmp_path / "q.jsonl"), list(p["collections"]))
  for seed in range(5):
    drawn = [q.id for q in orca.stratified(queries, seed=seed)]
    assert sorted(drawn) == sorted(q.id for q in queries)   # each query drawn exactly once
    assert max(drawn.index(f"small{i}") for i in range(4)) < 16
  queries = orca.load_queries(inputs["queries"], list(p["collections"]))
  for q in queries:
    allowed = orca.allowed_messages(p, q)
    assert set(allowed) <= set(p["collections"][q.collection])
    assert q.multiple_choice or not set(allowed) & {8, 10}
