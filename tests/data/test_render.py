"""The ablation knobs of rendering, and few-shot prompts that never leak the evaluated example."""
import collections
import re

import numpy as np
import pytest

from instruct_jax.data import render
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates


@pytest.fixture(scope="module")
def builtin_tasks():
  return tasks_lib.builtin_tasks()


def _render_many(task, cfg, n=300, split="train"):
  return render.render_split(task, split, cfg, n=n)


def test_few_shot_never_includes_the_evaluated_example():
  # Five distinct records; every prompt is few-shot with up to 5 exemplars drawn from the same five.
  records = [{"word": w, "answer": w.upper()} for w in ("alpha", "bravo", "charlie", "delta", "echo")]
  tmpl = templates.parse({"t": ["Shout {word}"]}, "inline")["t"]
  task = tasks_lib.Task("t", sources.MemorySource({"train": records}), tmpl)
  cfg = render.RenderConfig(few_shot_rate=1.0, max_shots=5)
  for seed in range(20):
    for ex in render.render_split(task, "train", cfg, seed=seed):
      own = records[ex["source_index"]]
      demos, prompt = ex["inputs"].rsplit("Shout ", 1)
      assert prompt == own["word"]
      assert own["word"] not in demos and own["answer"] not in demos
      assert 1 <= ex["shots"] <= 4 and demos.count("Shout ") == ex["shots"]


def test_few_shot_skips_duplicates_and_same_id_across_splits():
  # "test" is a prefix of "train" (as in SuperNI): exemplars come from train but must skip the same id,
  # and a record with the same prompt under another id must be skipped too.
  train = [{"id": f"i{i}", "q": f"q{i}", "answer": f"a{i}"} for i in range(6)]
  train.append({"id": "dup", "q": "q0", "answer": "a0"})
  task = tasks_lib.Task("t", sources.MemorySource({"train": train, "test": train[:2]}),
                        templates.parse({"t": ["Q: {q}"]}, "inline")["t"])
  for seed in range(30):
    for ex in render.render_split(task, "test", render.RenderConfig(few_shot_rate=1.0, max_shots=5), seed=seed):
      demos = ex["inputs"].rsplit("Q: ", 1)[0]
      own = train[ex["source_index"]]
      assert f"Q: {own['q']}\n" not in demos and own["answer"] not in demos


def test_few_shot_rate_and_shot_counts(builtin_tasks):
  task = builtin_tasks["builtin/reverse"]
  exs = _render_many(task, render.RenderConfig(few_shot_rate=0.5, max_shots=3, template_ids=(0,)), n=400)
  shots = np.array([e["shots"] for e in exs])
  assert 0.4 < (shots > 0).mean() < 0.6 and shots.max() == 3
  exact = _render_many(task, render.RenderConfig(few_shot_rate=1.0, min_shots=2, max_shots=2), n=50)
  assert {e["shots"] for e in exact} == {2}
  separators = set()
  for e in exs:
    assert e["inputs"].count("Reverse the order of these") == e["shots"] + 1
    separators |= {len(m) for m in re.findall(r"(\n+)Reverse", e["inputs"])}
  assert separators == {1, 2, 3}  # exemplars are joined by 1-3 newlines


def test_num_templates_and_template_ids(builtin_tasks):
  task = builtin_tasks["builtin/sort_ascending"]
  used = {e["template_id"] for e in _render_many(task, render.RenderConfig(num_templates=3))}
  assert used == {0, 1, 2}
  used = {e["template_id"] for e in _render_many(task, render.RenderConfig(template_ids=(8, 9)))}
  assert used == {8, 9}
  with pytest.raises(ValueError, match="no usable template among ids"):
    render.Renderer(task, render.RenderConfig(template_ids=(99,)))


def test_round_robin_cycles_through_templates(builtin_tasks):
  task = builtin_tasks["builtin/sort_ascending"]
  exs = _render_many(task, render.RenderConfig(template_choice="round_robin", num_templates=4), n=12)
  assert [e["template_id"] for e in exs] == [0, 1, 2, 3] * 3
  rand = _render_many(task, render.RenderConfig(num_templates=4), n=400)
  counts = collections.Counter(e["template_id"] for e in rand)
  assert all(70 < c < 130 for c in counts.values())


def test_inversion_and_cot_only_where_available(builtin_tasks):
  cfg = render.RenderConfig(inversion_rate=1.0, cot_rate=1.0)
  rev = builtin_tasks["builtin/reverse"]
  inverted_ids = {t.id for t in rev.templates if t.kind == "inverted"}
  exs = _render_many(rev, cfg, n=50)
  assert {e["template_id"] for e in exs} == inverted_ids
  for e in exs:  # the inverted target is the original list, found reversed in the prompt
    assert " ".join(e["targets"].split()[::-1]) in e["inputs"] and e["references"] == [e["targets"]]
  count = builtin_tasks["builtin/count_even"]
  exs = _render_many(count, cfg, n=50)
  assert all(count.templates[e["template_id"]].kind == "cot" for e in exs)
  assert all(e["targets"].endswith(f"So the answer is {count.example('train', e['source_index'])['answer']}.")
             for e in exs)
  # Neither inverted nor chain-of-thought templates exist for sorting: standard ones are used.
  srt = builtin_tasks["builtin/sort_ascending"]
  assert all(srt.templates[e["template_id"]].kind == "standard" for e in _render_many(srt, cfg, n=50))
  # Off by default.
  assert all(rev.templates[e["template_id"]].kind == "standard"
             for e in _render_many(rev, render.RenderConfig(), n=100))


def test_options_rate(builtin_tasks):
  task = builtin_tasks["builtin/contains"]
  assert not any("OPTIONS:" in e["inputs"] for e in _render_many(task, render.RenderConfig(options_rate=0.0)))
  assert all("OPTIONS:\n- yes\n- no" in e["inputs"] for e in _render_many(task, render.RenderConfig()))
  half = np.mean(["OPTIONS:" in e["inputs"] for e in _render_many(task, render.RenderConfig(options_rate=0.5), n=400)])
  assert 0.4 < half < 0.6


def test_bad_knobs_are_named():
  with pytest.raises(ValueError, match="few_shot_rate must be in"):
    render.RenderConfig(few_shot_rate=1.5)
  with pytest.raises(ValueError, match="min_shots <= max_shots"):
    render.RenderConfig(min_shots=3, max_shots=2)
  with pytest.raises(ValueError, match="template_choice must be one of"):
    render.RenderConfig(template_choice="sequential")


def test_examples_carry_metadata_and_are_deterministic(builtin_tasks):
  task = builtin_tasks["builtin/first_k"]
  cfg = render.RenderConfig(few_shot_rate=0.3)
  a = render.render_split(task, "validation", cfg, n=30, seed=3, task_index=5)
  assert a == render.render_split(task, "validation", cfg, n=30, seed=3, task_index=5)
  assert a != render.render_split(task, "validation", cfg, n=30, seed=4, task_index=5)
  assert all(e["task_index"] == 5 and {"template_id", "shots", "references"} <= set(e) for e in a)
