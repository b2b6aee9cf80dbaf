"""The Flan 2021 catalogue without downloads: every task's preprocessing and every one of its templates on random
examples with the real builders' features (tests/flan_data.py), the mixtures, held-out clusters and the preview."""
import collections
import dataclasses

import ml_collections
import numpy as np
import pytest

from tests import flan_data  # pylint: disable=g-bad-import-order  (imports the TFDS builder modules first)
import tensorflow_datasets as tfds

from instruct_jax import configs
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import preview
from instruct_jax.data import render
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib
from instruct_jax.evals import evaluators


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("flan_tfds"))
  flan_data.prepare_super_glue(out)
  return out


@pytest.fixture(scope="module")
def mocked_tasks(data_dir):
  """The catalogue's tasks, their records read through `tfds.data_source` inside the mock once and kept in memory
  (so rendering every template is fast)."""
  with flan_data.mocked(data_dir):
    tasks = flan2021.tasks(data_dir)
    read = {name: {split: list(task.source.load(split)) for split in ("train", "test")} for name, task in tasks.items()}
  return {name: dataclasses.replace(task, source=sources.MemorySource(read[name])) for name, task in tasks.items()}


def test_catalogue_covers_flan_2021_clusters():
  by_cluster = collections.Counter(s.cluster for s in flan2021.SPECS)
  assert set(by_cluster) == set(flan2021.CLUSTERS) and len(flan2021.CLUSTERS) == 13
  assert len(flan2021.SPECS) == len({s.name for s in flan2021.SPECS}) >= 62
  assert by_cluster["nli"] == 9 and by_cluster["translation"] == 10 and by_cluster["summarization"] == 11
  nlu = templates_lib.load("nlu")
  for name, key in {"glue/rte": "rte", "super_glue/boolq": "boolq", "anli/r1": "anli", "squad/v1.1": "squad"}.items():
    assert flan2021.tasks()[name].templates == nlu[key]  # the first four TFDS tasks are members, templates kept


def _rendered(task, split, template):
  cfg = render.RenderConfig(template_ids=(template.id,), inversion_rate=1.0, cot_rate=1.0, options_rate=1.0)
  renderer = render.Renderer(task, cfg, split=split)
  return [ex for i in range(task.num_examples(split)) if (ex := renderer(i, i, np.random.default_rng(i))) is not None]


def test_every_task_and_template_on_examples_with_the_builders_features(mocked_tasks):
  assert len(mocked_tasks) == len(flan2021.SPECS)
  for name, task in mocked_tasks.items():
    assert len(task.templates) >= 10, name
    assert sum(t.kind == "inverted" for t in task.templates) <= 3, name
    for split in ("train", "test"):
      kept = [f for i in range(task.num_examples(split)) if (f := task.example(split, i)) is not None]
      assert kept, f"{name} {split}: preprocessing dropped every example"
      for fields in kept:
        assert str(fields["answer"]).strip(), name
        if task.metric == "rank_accuracy":  # rank classification needs the answer among the options
          assert fields["options"] and fields["answer"] in fields["options"], name
      for t in task.templates:
        exs = _rendered(task, split, t)
        assert len(exs) == len(kept) and all(ex["template_id"] == t.id for ex in exs), (name, t.id)
        assert all(ex["inputs"].strip() and ex["targets"].strip() for ex in exs), (name, t.id)
        if t.kind == "standard" and task.options is not None:
          assert all("OPTIONS:\n- " in ex["inputs"] for ex in exs), (name, t.id)


def test_few_shot_prompts_through_the_renderer(mocked_tasks):
  for name in ("glue/rte", "ai2_arc/ARC-Easy", "xsum", "wmt16_translate/de-en", "gsm8k"):
    cfg = render.RenderConfig(template_ids=(1,), few_shot_rate=1.0, min_shots=2, max_shots=2)
    ex = render.render_split(mocked_tasks[name], "test", cfg, n=1)[0]
    zero = render.render_split(mocked_tasks[name], "test", render.RenderConfig(template_ids=(1,)), n=1)[0]
    assert ex["shots"] == 2 and ex["inputs"].endswith(zero["inputs"]) and len(ex["inputs"]) > len(zero["inputs"])


def test_a_field_the_builder_lacks_fails(data_dir):
  spec = next(s for s in flan2021.SPECS if s.name == "glue/rte")
  with flan_data.mocked(data_dir):
    record = tfds.data_source("glue/rte", split="train")[0]
  with pytest.raises(KeyError, match="premise"):  # glue/rte names its fields sentence1 / sentence2
    flan2021.Spec(spec.name, spec.cluster, "anli", flan2021._nli3()).preprocess(record)
  bad = templates_lib.parse({"t": ["{premise} {no_such_field}"]}, "test")["t"]
  task = tasks_lib.Task("rte_bad", sources.MemorySource({"train": [record]}), bad, preprocess=spec.preprocess)
  with pytest.raises(templates_lib.TemplateError, match="no_such_field"):
    render.render_split(task, "train", render.RenderConfig())


def test_super_glue_stand_in_is_read_with_the_real_data_source(data_dir):
  with flan_data.without_super_glue_code():
    tasks = flan2021.tasks(data_dir)
    cb = tasks["super_glue/cb"]
    assert cb.num_examples("train") == 8 and cb.num_examples("test") == 6  # test reads validation (labelled)
    raw = cb.source.load("train")
    fields = cb.example("train", 0)
    assert fields["premise"] == raw[0]["premise"] and isinstance(fields["premise"], str)
    assert fields["answer"] == ("yes", "no", "it is not possible to tell")[int(raw[0]["label"])]  # cb: ent, contr, neu
    record = tasks["super_glue/record"].example("test", 0)
    assert record["answer"] == "Anna" and "___" in record["query"] and record["options"] == ["Anna", "Bob"]
    unlabelled = sources.TfdsSource("super_glue/boolq", data_dir=data_dir).load("test")
    assert all(tasks["super_glue/boolq"].preprocess(r) is None for r in unlabelled)


def test_mixtures_leave_one_cluster_out():
  tasks = flan2021.tasks()
  mixes = mixtures_lib.catalogue(tasks)
  everything = set(mixes["flan2021"].members)
  assert everything == {s.name for s in flan2021.SPECS if s.cluster != "cot"} and mixes["flan2021"].cap == 3000
  for cluster in flan2021.CLUSTERS:
    held = set(flan2021.cluster_tasks(cluster))
    train = set(mixes[f"flan2021_no_{cluster}"].members)
    assert held and not held & train and set(mixes[f"flan2021_{cluster}"].members) == held
    assert train == everything - held
    assert flan2021.training_mixture("flan2021", cluster) == f"flan2021_no_{cluster}"
  assert flan2021.training_mixture("builtin_no_check", "check") == "builtin_no_check"


def test_rates_are_examples_proportional_with_the_cap():
  sizes = {"a": 10_000, "b": 1_000, "c": 3_000}
  tasks = {n: tasks_lib.Task(n, sources.MemorySource({"train": [{"answer": "x"}] * k}),
                             templates_lib.parse({"t": ["q"]}, "test")["t"]) for n, k in sizes.items()}
  rates = mixtures_lib.task_rates("m", tasks, {"m": mixtures_lib.Mixture("m", ("a", "b", "c"), cap=3000)})
  assert rates == pytest.approx({"a": 3 / 7, "b": 1 / 7, "c": 3 / 7})


def _eval_section(**kw):
  e = configs.base().eval
  for k, v in kw.items():
    e[k] = v
  return e


def test_held_out_flan_cluster_is_evaluated_and_an_unknown_one_is_a_one_line_error():
  sets = evaluators.eval_sets(_eval_section(held_out_cluster="commonsense", num_examples=3))
  assert [(s.condition, set(s.tasks)) for s in sets] == [("held_out_cluster", set(flan2021.cluster_tasks(
      "commonsense")))]
  builtin_sets = evaluators.eval_sets(_eval_section(held_out_cluster="check"))  # the built-in clusters still work
  assert [s.condition for s in builtin_sets] == ["seen_templates", "held_out_cluster"]
  with pytest.raises(evaluators.UnknownCluster) as e:
    evaluators.eval_sets(_eval_section(held_out_cluster="nlii"))
  assert "\n" not in str(e.value) and "'nlii'" in str(e.value) and "nli" in str(e.value) and "check" in str(e.value)


def test_held_out_rows_score_rank_accuracy_for_options_and_generation_metrics_otherwise(mocked_tasks):
  sets = [evaluators.EvalSet("held_out_cluster", ("super_glue/copa", "piqa", "squad/v1.1"), None, "test", 2)]
  rows = evaluators.render_eval_examples(sets, mocked_tasks)
  by_task = {r["task"]: r for r in rows}
  assert by_task["piqa"]["metric"] == "rank_accuracy" and len(by_task["piqa"]["options"]) == 2
  assert by_task["squad/v1.1"]["metric"] == "rougeL" and by_task["squad/v1.1"]["options"] == []

  def loglik(prompts, continuations):  # prefers each row's reference answer
    answers = {r["inputs"]: r["references"][0] for r in rows}
    return [0.0 if answers[p] == c else -1.0 for p, c in zip(prompts, continuations)]

  scored = evaluators.evaluate(rows, lambda prompts: ["nothing"] * len(prompts), loglik)
  for r in scored:
    if r["metric"] == "rank_accuracy":
      assert r["score"] == r["rank_accuracy"] == 1.0 and r["exact_match"] == 0.0
    else:
      assert r["score"] == r["rougeL"] and "rank_accuracy" not in r


def test_preview_of_the_full_mixture_on_mock_data_realises_the_rates(data_dir, mocked_tasks, spm_tokenizer):
  from instruct_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  mixes = mixtures_lib.catalogue(mocked_tasks)
  config = pipeline.PipelineConfig(mixture="flan2021", inputs_length=128, targets_length=32,
                                   render=render.RenderConfig(inversion_rate=0.2))
  text = preview.preview(config, spm_tokenizer, mocked_tasks, mixes, num_examples=2, stats_examples=4000)
  assert "mixture 'flan2021': 67 tasks" in text
  rows = {}  # the statistics table: task, examples, realised share, target rate, ...
  for line in text.splitlines():
    parts = line.split()
    if len(parts) >= 4 and parts[0] in mocked_tasks:
      rows[parts[0]] = (float(parts[2]), float(parts[3]))
  assert set(rows) == set(mixes["flan2021"].members)
  assert sum(rate for _, rate in rows.values()) == pytest.approx(1.0, abs=0.01)
  assert max(abs(share - rate) for share, rate in rows.values()) < 0.02
  assert sum(abs(share - rate) for share, rate in rows.values()) / 2 < 0.1  # total variation, ~0.05 expected


def test_preview_lists_unprepared_datasets_with_their_build_commands(data_dir, tmp_path):
  with flan_data.without_super_glue_code():
    tasks, mixes = mixtures_lib.catalogues(tasks_lib.DataPaths(tfds_data_dir=data_dir))
    kept, notes = preview.without_unreadable("flan2021", tasks, mixes, "train", data_dir)
  assert set(mixtures_lib.leaf_tasks("flan2021", tasks, kept)) == {
      f"super_glue/{c}" for c in ("boolq", "cb", "copa", "multirc", "record", "wic")}
  text = "\n".join(notes)
  assert f"tfds build glue/rte --data_dir={data_dir} --file_format=array_record" in text
  assert "tfds build super_glue/cb" not in text and text.count("tfds build ") == 67 - 6
  empty = str(tmp_path / "empty")
  tasks, mixes = mixtures_lib.catalogues(tasks_lib.DataPaths(tfds_data_dir=empty))
  with pytest.raises(sources.DataError, match=r"none of the 67 datasets of 'flan2021' can be read"):
    preview.without_unreadable("flan2021", tasks, mixes, "train", empty)


def test_max_task_examples_caps_what_each_task_trains_on(mocked_tasks):
  from instruct_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = pipeline.PipelineConfig(mixture="flan2021", max_task_examples=5)
  assert pipeline.pool_size(config, mocked_tasks["snli"]) == 5
  c = configs.from_command_line(["--config=configs/flan2021.py", "--config.data.max_task_examples=7"])
  assert isinstance(c.data, ml_collections.ConfigDict) and c.data.max_task_examples == 7
  c = configs.load("configs/flan2021.py")  # Flan 2021's caps
  assert (c.data.mixing_cap, c.data.max_task_examples) == (flan2021.MIXING_CAP, flan2021.MAX_TRAIN_EXAMPLES)
