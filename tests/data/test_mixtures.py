"""Mixing rates (examples-proportional with cap, temperature, weights, nesting) and realised proportions."""
import numpy as np
import pytest

from instruct_jax.data import builtin
from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import render
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates


def _tasks(sizes: dict[str, int]) -> dict[str, tasks_lib.Task]:
  tmpl = templates.load("builtin")
  names = list(builtin.TASKS)
  return {name: tasks_lib.Task(name, builtin.BuiltinSource(names[i], sizes={"train": size}), tmpl[names[i]])
          for i, (name, size) in enumerate(sizes.items())}


TASKS = _tasks({"a": 100, "b": 1000, "c": 10000, "d": 400})


def test_examples_proportional_with_cap():
  mix = {"m": mixtures.Mixture("m", ("a", "b", "c"), cap=3000)}
  rates = mixtures.task_rates("m", TASKS, mix)
  assert rates == pytest.approx({"a": 100 / 4100, "b": 1000 / 4100, "c": 3000 / 4100})
  uncapped = mixtures.task_rates("m", TASKS, mix, cap=100_000)  # the cap knob overrides the mixture's
  assert uncapped == pytest.approx({"a": 100 / 11100, "b": 1000 / 11100, "c": 10000 / 11100})


def test_temperature_equal_and_weights():
  mix = {"t": mixtures.Mixture("t", ("a", "c"), rate="temperature", temperature=2.0),
         "e": mixtures.Mixture("e", ("a", "b", "c"), rate="equal"),
         "w": mixtures.Mixture("w", ("a", "b"), rate="weights", weights=(3.0, 1.0))}
  assert mixtures.task_rates("t", TASKS, mix) == pytest.approx({"a": 10 / 110, "c": 100 / 110})
  assert mixtures.task_rates("t", TASKS, mix, temperature=1.0) == pytest.approx({"a": 100 / 10100, "c": 10000 / 10100})
  assert mixtures.task_rates("e", TASKS, mix) == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
  assert mixtures.task_rates("w", TASKS, mix) == pytest.approx({"a": 0.75, "b": 0.25})


def test_nested_mixtures():
  mix = {"inner": mixtures.Mixture("inner", ("a", "b")),  # examples-proportional: 1/11, 10/11
         "other": mixtures.Mixture("other", ("b", "d"), rate="equal"),
         "outer": mixtures.Mixture("outer", ("inner", "other", "c"), rate="weights", weights=(0.5, 0.3, 0.2)),
         "by_size": mixtures.Mixture("by_size", ("inner", "d"))}  # inner's size is 1100, d's 400
  rates = mixtures.task_rates("outer", TASKS, mix)
  assert rates == pytest.approx({"a": 0.5 / 11, "b": 0.5 * 10 / 11 + 0.15, "d": 0.15, "c": 0.2})
  assert sum(rates.values()) == pytest.approx(1.0)
  assert mixtures.task_rates("by_size", TASKS, mix) == pytest.approx(
      {"a": 100 / 1500, "b": 1000 / 1500, "d": 400 / 1500})


def test_cycles_and_bad_definitions():
  mix = {"x": mixtures.Mixture("x", ("a", "y")), "y": mixtures.Mixture("y", ("b", "x"))}
  with pytest.raises(ValueError, match="mixture cycle: x -> y -> x"):
    mixtures.task_rates("x", TASKS, mix)
  with pytest.raises(ValueError, match="needs one weight per member"):
    mixtures.Mixture("w", ("a", "b"), rate="weights", weights=(1.0,))
  with pytest.raises(ValueError, match="rate must be one of"):
    mixtures.Mixture("w", ("a",), rate="proportional")


def test_unknown_names_suggest_closest(catalogues):
  tasks, mixes = catalogues
  with pytest.raises(KeyError, match=r"unknown task or mixture 'buitlin'; did you mean 'builtin'"):
    mixtures.task_rates("buitlin", tasks, mixes)
  with pytest.raises(KeyError, match=r"did you mean 'builtin/sort_ascending'"):
    mixtures.task_rates("builtin/sort_ascnding", tasks, mixes)
  with pytest.raises(KeyError, match=r"did you mean .*'glue/rte'"):
    tasks_lib.lookup(tasks, "rte")
  bad = {"m": mixtures.Mixture("m", ("a", "bb"))}
  with pytest.raises(KeyError, match=r"unknown task or mixture 'bb'; did you mean 'b'"):
    mixtures.task_rates("m", TASKS, bad)
  # A SuperNI name without SuperNI task files says which key brings them.
  for name in ("niv2_train", "niv2"):
    with pytest.raises(KeyError, match=rf"^'{name}' is a SuperNI mixture or task, and no SuperNI task files were "
                                       r"given: set config\.data_paths\.superni_dir"):
      mixtures.task_rates(name, tasks, mixes)


def test_catalogue_mixtures(catalogues):
  tasks, mixes = catalogues
  assert len(mixtures.task_rates("builtin", tasks, mixes)) == 18
  held_out = mixtures.task_rates("builtin_no_transform", tasks, mixes)
  assert len(held_out) == 15 and not any(n.removeprefix("builtin/") in builtin.CLUSTERS["transform"] for n in held_out)
  assert set(mixtures.task_rates("builtin_check", tasks, mixes)) == {f"builtin/{n}" for n in builtin.CLUSTERS["check"]}
  assert "tfds_nlu" in mixes and "niv2" not in mixes  # no SuperNI directory given


def test_catalogue_with_superni(shared_data):
  ni = shared_data / "natural-instructions"
  tasks, mixes = mixtures.catalogues(tasks_lib.DataPaths(superni_dir=str(ni)))
  test = mixtures.task_rates("niv2_test", tasks, mixes)
  train = mixtures.task_rates("niv2_train", tasks, mixes)
  assert len(test) == 5 and len(train) == 3 and not set(test) & set(train)
  # Capped at 100 per task: the 496- and 281-instance tasks weigh as much as any 100-instance task.
  assert test["niv2/task1393_superglue_copa_text_completion"] == pytest.approx(100 / (100 + 100 + 12 + 12 + 20))


def test_realised_proportions_within_two_percent():
  mix = {"inner": mixtures.Mixture("inner", ("a", "b"), cap=500),
         "outer": mixtures.Mixture("outer", ("inner", "c", "d"), rate="weights", weights=(0.5, 0.35, 0.15))}
  cfg = pipeline.PipelineConfig(mixture="outer", render=render.RenderConfig(), seed=3)
  examples, names, rates = pipeline.rendered_examples(cfg, TASKS, mix)
  want = np.array([rates[n] for n in names])
  assert want == pytest.approx([0.5 / 6, 0.5 * 5 / 6, 0.35, 0.15])
  got = render.shares([examples[i]["task_index"] for i in range(10_000)], len(names))
  np.testing.assert_allclose(got, want, atol=0.02)
  print(mixtures.format_rates(rates, got))


def test_realised_proportions_with_many_tasks():
  # 60 tasks are mixed in two levels (groups of tasks, then groups); the shares must still hold.
  sizes = {f"t{i}": 50 + 37 * i for i in range(60)}
  tmpl = templates.load("builtin")["reverse"]
  tasks = {n: tasks_lib.Task(n, builtin.BuiltinSource("reverse", sizes={"train": s}), tmpl) for n, s in sizes.items()}
  mix = {"many": mixtures.Mixture("many", tuple(sizes))}
  cfg = pipeline.PipelineConfig(mixture="many", render=render.RenderConfig())
  examples, names, rates = pipeline.rendered_examples(cfg, tasks, mix)
  got = render.shares([examples[i]["task_index"] for i in range(10_000)], len(names))
  want = np.array([rates[n] for n in names])
  np.testing.assert_allclose(got, want, atol=0.02)
  np.testing.assert_allclose(got, want, rtol=0.1)  # each small share also holds relatively
