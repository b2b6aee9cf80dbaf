"""The grain pipeline end to end: schema, content, determinism, resume, host sharding, drops, devices."""
import json

import jax
import ml_collections
import numpy as np
import pytest

from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import render
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates

CFG = pipeline.PipelineConfig(mixture="builtin", inputs_length=64, targets_length=16, batch_size=4, seed=1,
                              render=render.RenderConfig(few_shot_rate=0.2, options_rate=0.5))


def _batches(pipe, n, it=None):
  it = iter(pipe.dataset) if it is None else it
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_packed_batch_schema(spm_tokenizer, catalogues):
  pipe = pipeline.make_pipeline(CFG, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  b = next(iter(pipe))
  assert set(b) == {"encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
                    "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions",
                    "task_index", "template_id", "shots"}
  assert b["encoder_input_tokens"].shape == (4, 64) and b["decoder_target_tokens"].shape == (4, 16)
  assert b["encoder_segment_ids"].max() >= 2  # short built-in examples do get packed
  seg = b["decoder_segment_ids"]
  # Meta features are constant within each packed example and 0 on padding.
  for m in ("task_index", "template_id", "shots"):
    assert (b[m][seg == 0] == 0).all()
    for r in range(4):
      for s in set(seg[r][seg[r] > 0]):
        assert len(set(b[m][r][seg[r] == s])) == 1
  assert b["task_index"].max() < len(pipe.task_names) == 18
  # Every example ends with end-of-text, which carries loss weight.
  eos = b["decoder_target_tokens"] == spm_tokenizer.eos_id
  assert eos.sum() == sum(len(set(s[s > 0])) for s in seg) and (b["decoder_loss_weights"][eos] == 1).all()


def test_unpacked_rows_hold_the_rendered_examples_in_order(spm_tokenizer, catalogues):
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "pack": False, "inputs_length": 256})
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  rows = [r for b in _batches(pipe, 3) for r in zip(*(b[k] for k in ("encoder_input_tokens",
                                                                     "decoder_target_tokens", "task_index")))]
  for i, (enc, dec, task_index) in enumerate(rows):
    ex = pipe.examples[i]
    assert spm_tokenizer.decode(dec) == spm_tokenizer.decode(spm_tokenizer.encode(ex["targets"]))
    assert spm_tokenizer.decode(enc) == spm_tokenizer.decode(spm_tokenizer.encode(ex["inputs"]))
    assert task_index[0] == ex["task_index"]


def test_deterministic_for_a_seed(spm_tokenizer, catalogues):
  make = lambda cfg: pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  a = _batches(make(CFG), 4)
  assert _same(a, _batches(make(CFG), 4))
  other = pipeline.PipelineConfig(**{**CFG.__dict__, "seed": 2})
  assert not _same(a, _batches(make(other), 4))


def test_resume_mid_epoch_gives_the_same_batches(spm_tokenizer, catalogues):
  # A tiny task (7 examples) so that the resumed stretch crosses epoch boundaries too.
  records = [{"q": f"w{i}", "answer": f"a{i}"} for i in range(7)]
  small = tasks_lib.Task("small", sources.MemorySource({"train": records}),
                         templates.parse({"small": ["Say {q}", "Repeat {q}"]}, "inline")["small"])
  tasks = {**catalogues[0], "small": small}
  mixes = {**catalogues[1], "mix": mixtures.Mixture("mix", ("small", "builtin"), rate="weights", weights=(1, 3))}
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "mixture": "mix"})
  it = iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes).dataset)
  _batches(None, 5, it)
  state = it.get_state()
  json.dumps(state)  # the state is plain data, saved next to the model checkpoint
  expected = _batches(None, 6, it)
  fresh = iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=tasks, mixtures=mixes).dataset)
  fresh.set_state(state)
  assert _same(expected, _batches(None, 6, fresh))


def test_each_host_reads_its_own_share(catalogues):
  cfg = pipeline.PipelineConfig(mixture="builtin_check", batch_size=4)
  seen = []
  for host in range(2):
    ex, _, _ = pipeline.rendered_examples(cfg, *catalogues, process_index=host, process_count=2)
    seen.append({(ex[i]["task_index"], ex[i]["source_index"]) for i in range(1500)})
    assert all(s % 2 == host for _, s in seen[-1])
  assert not seen[0] & seen[1]


def test_per_host_batch_size(spm_tokenizer, catalogues):
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "batch_size": 8})
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1],
                                process_index=1, process_count=2)
  assert next(iter(pipe))["decoder_target_tokens"].shape == (4, 16)
  with pytest.raises(ValueError, match="not divisible by 3 hosts"):
    pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1], process_count=3)


def test_decoder_only_features(spm_tokenizer, catalogues):
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "model_kind": "decoder", "pack": False})
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])
  b = next(iter(pipe))
  assert "encoder_input_tokens" not in b and b["decoder_input_tokens"].shape == (4, 80)
  for r in range(4):
    ex = pipe.examples[r]
    n_out = len(spm_tokenizer.encode(ex["targets"])) + 1
    w = b["decoder_loss_weights"][r]
    assert w.sum() == n_out and b["decoder_input_tokens"][r][0] == spm_tokenizer.bos_id
    assert spm_tokenizer.decode(b["decoder_target_tokens"][r][w > 0]) == \
        spm_tokenizer.decode(spm_tokenizer.encode(ex["targets"]))


def test_empty_targets_are_dropped_and_counted_and_truncation_counted(spm_tokenizer):
  records = [{"q": "word " * (i % 5 * 20), "answer": "" if i % 3 == 0 else f"out {i}"} for i in range(30)]
  task = tasks_lib.Task("t", sources.MemorySource({"train": records}),
                        templates.parse({"t": ["Echo {q}"]}, "inline")["t"])
  cfg = pipeline.PipelineConfig(mixture="t", inputs_length=32, targets_length=8, batch_size=2, pack=False,
                                shuffle=False)
  pipe = pipeline.make_pipeline(cfg, spm_tokenizer, tasks={"t": task}, mixtures={})
  it = iter(pipe)
  for _ in range(10):
    b = next(it)
    assert (b["decoder_loss_weights"].sum(axis=1) > 0).all()  # no row without a learnable target
  assert pipe.stats.dropped[0] >= 6 and pipe.stats.truncated[0] > 0
  assert "dropped" in pipe.stats.table()


def test_config_from_ml_collections():
  cfg = ml_collections.ConfigDict({"mixture": "builtin", "batch_size": 16,
                                   "render": {"few_shot_rate": 0.5, "template_ids": [0, 1]}})
  pc = pipeline.PipelineConfig.from_config(cfg)
  assert pc.batch_size == 16 and pc.render.template_ids == (0, 1) and pc.render.few_shot_rate == 0.5
  with pytest.raises(ValueError, match=r"unknown data\.render config fields \['fewshot'\]"):
    pipeline.PipelineConfig.from_config({"mixture": "builtin", "render": {"fewshot": 1}})
  with pytest.raises(ValueError, match="model_kind must be one of"):
    pipeline.PipelineConfig(mixture="builtin", model_kind="encoder")


def test_to_global_batch_on_a_device_mesh(spm_tokenizer, catalogues):
  assert jax.device_count() == 8
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "batch_size": 8})
  b = next(iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  g = pipeline.to_global_batch(b, sharding)
  assert g["decoder_target_tokens"].shape == (8, 16) and g["decoder_target_tokens"].sharding == sharding
  assert len(g["encoder_input_tokens"].addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(g["encoder_input_tokens"]), b["encoder_input_tokens"])


def test_train_fraction_trains_on_each_tasks_first_examples_only(catalogues, monkeypatch):
  """data.train_fraction keeps the first ceil(fraction x n) examples of every task, few-shot exemplars included."""
  read = []
  real = tasks_lib.Task.example
  monkeypatch.setattr(tasks_lib.Task, "example", lambda self, split, i: read.append(i) or real(self, split, i))
  cfg = pipeline.PipelineConfig(mixture="builtin_check", batch_size=4, train_fraction=0.0005,  # 20,000 -> 10
                                render=render.RenderConfig(few_shot_rate=1.0, max_shots=2))
  ex, names, _ = pipeline.rendered_examples(cfg, *catalogues)
  rows = [ex[i] for i in range(400)]
  by_task = {i: {r["source_index"] for r in rows if r["task_index"] == i} for i in range(len(names))}
  assert all(indices == set(range(10)) for indices in by_task.values()), by_task  # each of the ten, none beyond
  assert sum(r["shots"] for r in rows) > 300 and set(read) == set(range(10))  # exemplars from the ten too
  with pytest.raises(ValueError, match="config.data.train_fraction must be in"):
    pipeline.PipelineConfig(mixture="builtin", train_fraction=0.0)


@pytest.mark.parametrize("kind,pack", [("encoder_decoder", True), ("decoder", False)])
def test_batch_spec_is_the_schema_the_pipeline_yields(spm_tokenizer, catalogues, kind, pack):
  """What aot.py compiles the train step for, before any data is read, is what the pipeline then feeds it."""
  from instruct_jax.data import packing  # pylint: disable=g-import-not-at-top
  cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "model_kind": kind, "pack": pack})
  b = next(iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])))
  spec = packing.batch_spec(kind, cfg.inputs_length, cfg.targets_length, cfg.batch_size,
                            meta_features=pipeline.META_FEATURES)
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == spec


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder"])
def test_unpacked_rows_are_one_example_padded_at_the_end(spm_tokenizer, catalogues, kind):
  """What the train step's packed=False (cuDNN on row lengths) assumes of data.pack=False batches, and the
  check the trainer runs on each of them; packed rows fail it."""
  from instruct_jax.data import packing  # pylint: disable=g-import-not-at-top
  batches = {}
  for pack in (False, True):
    cfg = pipeline.PipelineConfig(**{**CFG.__dict__, "model_kind": kind, "pack": pack})
    batches[pack] = next(iter(pipeline.make_pipeline(cfg, spm_tokenizer, tasks=catalogues[0], mixtures=catalogues[1])))
  unpacked = batches[False]["decoder_segment_ids"]
  assert (unpacked == 0).any() and (unpacked[:, 0] == 1).all()
  packing.check_one_example_rows(batches[False])
  assert batches[True]["decoder_segment_ids"].max() > 1
  with pytest.raises(ValueError, match="(en|de)coder_segment_ids: a row is not one example padded at its end"):
    packing.check_one_example_rows(batches[True])
