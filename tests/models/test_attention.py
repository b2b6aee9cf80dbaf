"""Every attention implementation computes what the einsum (`xla`) path computes.

On CPU the cuDNN path runs its exact arguments (segment mask, causal flag, window, grouped heads, T5's
bias) through jax.nn.dot_product_attention's xla implementation; the TPU Pallas kernels (splash, flash with
bias) run in interpret mode. Outputs are compared at non-padding queries; losses and gradients everywhere.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import configs, losses, step
from instruct_jax.models import attention, build
from tests import helpers

FUSED = ("cudnn", "pallas_tpu")
# segments of one row: three packed examples then padding (0)
_SEGMENTS = [1] * 9 + [2] * 14 + [3] * 5 + [0] * 4


def _inputs(L, S, H, N, K=16, seed=0, bias=False):
  r = np.random.default_rng(seed)
  q = jnp.asarray(r.normal(size=(2, L, H, K)), jnp.float32)
  k, v = (jnp.asarray(r.normal(size=(2, S, N, K)), jnp.float32) for _ in range(2))
  b = jnp.asarray(r.normal(size=(1, H, L, S)), jnp.float32) if bias else None
  return q, k, v, b


# Row layouts: "packed" (three examples, then padding), "one" (one example per row, the second row's shifted off
# its start: the general mask still serves), "rows" (one example per row padded at its end: Mask.packed=False,
# cuDNN takes lengths), "rows_empty" (the same with a row of padding only).
_ROW_LENGTHS = {"rows": (5, 11), "rows_empty": (3, None)}  # padding at the end of each row (None: all padding)


def _segments(length, layout):
  if layout in _ROW_LENGTHS:
    return jnp.asarray(np.stack([np.arange(length) < length - pad if pad is not None else np.zeros(length, bool)
                                 for pad in _ROW_LENGTHS[layout]]).astype(np.int32))
  row = np.asarray((_SEGMENTS * 4)[:length], np.int32)
  if layout == "one":
    row = np.where(np.arange(length) < length - 5, 1, 0).astype(np.int32)
  return jnp.asarray(np.stack([row, np.roll(row, 3)]))


def _mask(L, S, causal, window=None, layout="packed"):
  q_seg, kv_seg = _segments(L, layout), _segments(S, layout)
  pos = lambda seg: jnp.asarray(np.stack([_positions(r) for r in np.asarray(seg)]))
  return attention.Mask(q_seg, kv_seg, pos(q_seg), pos(kv_seg), causal=causal, window=window,
                        packed=layout not in _ROW_LENGTHS)


def _positions(row):
  out, count, prev = np.zeros_like(row), 0, None
  for i, s in enumerate(row):
    count = count + 1 if s == prev else 0
    out[i], prev = count, s
  return out


def _check(impl, L, S, H, N, causal, bias, window=None, layout="packed"):
  q, k, v, b = _inputs(L, S, H, N, bias=bias)
  mask = _mask(L, S, causal, window, layout)
  c = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  valid = np.asarray(mask.q_segments_BL > 0)

  def run(name, v_):
    def f(q, k, v, b):
      out = attention.attend(q, k, v, mask, b, implementation=name)
      return jnp.sum(jnp.where(valid[:, :, None, None], out * c, 0.0)), out
    argnums = (0, 1, 2, 3) if bias else (0, 1, 2)
    return jax.jit(jax.value_and_grad(f, argnums=argnums, has_aux=True))(q, k, v_, b)

  (ref_loss, ref_out), ref_grads = run("xla", v)
  (loss, out), grads = run(impl, v)
  np.testing.assert_allclose(np.asarray(out)[valid], np.asarray(ref_out)[valid], rtol=2e-5, atol=2e-5)
  assert helpers.rel_err(loss, ref_loss) < 1e-5
  for g, ref_g in zip(grads, ref_grads):
    assert np.isfinite(np.asarray(g)).all() and helpers.rel_err(g, ref_g) < 1e-4
  if layout != "packed":
    return
  # No query attends to another packed example: new values in segment 2 move no other segment's output.
  v_changed = jnp.where((mask.kv_segments_BS == 2)[:, :, None, None], v + 3.0, v)
  (_, out2), _ = run(impl, v_changed)
  others = valid & (np.asarray(mask.q_segments_BL) != 2)
  np.testing.assert_allclose(np.asarray(out2)[others], np.asarray(out)[others], rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(out2) - np.asarray(out))[np.asarray(mask.q_segments_BL) == 2].max() > 1e-2


# The shapes each model uses: decoder self-attention (causal, grouped heads, Mistral's window), T5 encoder
# self-attention (bidirectional, bias), T5 decoder self-attention (causal, bias), cross-attention (L != S).
CASES = {
    "causal_gqa": dict(L=32, S=32, H=4, N=2, causal=True, bias=False),
    "causal_gqa_window": dict(L=32, S=32, H=4, N=2, causal=True, bias=False, window=6),
    "bidirectional_bias": dict(L=32, S=32, H=2, N=2, causal=False, bias=True),
    "causal_bias": dict(L=32, S=32, H=2, N=2, causal=True, bias=True),
    "cross": dict(L=24, S=40, H=2, N=2, causal=False, bias=False),
    "bidirectional_gqa": dict(L=32, S=32, H=4, N=1, causal=False, bias=False),
    "causal_gqa_unpacked": dict(L=32, S=32, H=4, N=2, causal=True, bias=False, layout="one"),
    "bidirectional_bias_unpacked": dict(L=32, S=32, H=2, N=2, causal=False, bias=True, layout="one"),
    # Mask.packed=False: one example per row, padded at its end (data.pack=False; cuDNN takes row lengths).
    "causal_gqa_window_rows": dict(L=32, S=32, H=4, N=2, causal=True, bias=False, window=6, layout="rows"),
    "bidirectional_bias_rows": dict(L=32, S=32, H=2, N=2, causal=False, bias=True, layout="rows"),
    "causal_bias_rows_empty": dict(L=32, S=32, H=2, N=2, causal=True, bias=True, layout="rows_empty"),
    "cross_rows": dict(L=24, S=40, H=2, N=2, causal=False, bias=False, layout="rows"),
}
# In the default suite (interpret mode is slow): one case per kernel of each path; the rest are marked slow.
FAST = {("pallas_tpu", "causal_gqa"), ("pallas_tpu", "bidirectional_bias"), ("cudnn", "causal_gqa_window"),
        ("cudnn", "causal_bias"), ("cudnn", "causal_gqa_window_rows"), ("cudnn", "bidirectional_bias_rows"),
        ("cudnn", "causal_bias_rows_empty"), ("cudnn", "cross_rows")}


# Left out to keep the slow suite short: the whole-T5 test below runs these through the Pallas kernels.
COVERED_BY_T5 = {("pallas_tpu", "cross"), ("pallas_tpu", "causal_bias"), ("pallas_tpu", "bidirectional_gqa")}


@pytest.mark.parametrize("impl,case", [
    (i, c) if (i, c) in FAST else pytest.param(i, c, marks=pytest.mark.slow)
    for i in FUSED for c in CASES if (i, c) not in COVERED_BY_T5])
def test_fused_core_equals_xla(impl, case):
  _check(impl, **CASES[case])


@pytest.mark.parametrize("layout", ["packed", "rows"])
@pytest.mark.parametrize("L,S,N,causal,window,bias", [(32, 32, 2, True, 8, False), (32, 32, 4, False, None, True),
                                                      (24, 40, 4, False, None, False), (32, 32, 4, True, None, True)],
                         ids=["decoder", "t5_encoder", "cross", "t5_decoder"])
def test_cudnn_call_passes_jaxs_cudnn_checks(monkeypatch, L, S, N, causal, window, bias, layout):
  """With no GPU, jax's cuDNN op still traces (forward and backward) once its version probes are answered:
  its layout, dtype and bias checks accept our arguments, and the flags it receives are the intended ones:
  packed rows as a dense bias, rows of one example as the kernel's padding mask (lengths, no bias)."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_op
  monkeypatch.setattr(cudnn_op, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(cudnn_op, "check_compute_capability", lambda capability: True)
  H, K = 4, 64
  q = jnp.ones((2, L, H, K), jnp.bfloat16)
  k = jnp.ones((2, S, N, K), jnp.bfloat16)
  b = jnp.ones((1, H, L, S), jnp.float32) if bias else None
  mask = _mask(L, S, causal, window, layout)
  f = lambda q, k, v, b: attention.cudnn_call(q, k, v, mask, b, jnp.bfloat16, "cudnn").astype(jnp.float32).sum()
  grads = jax.grad(f, argnums=(0, 1, 2, 3) if bias else (0, 1, 2))
  text = str(jax.make_jaxpr(grads)(q, k, k, b))
  assert "dot_product_attention_fwd" in text and "dot_product_attention_bwd" in text
  expected = {("packed", False): "NO_MASK", ("packed", True): "CAUSAL", ("rows", False): "PADDING",
              ("rows", True): "PADDING_CAUSAL"}[layout, causal]
  assert re.search(rf"mask_type=MaskType\.{expected}\s", text)
  assert f"sliding_window_length={window}" in text
  if layout == "packed":
    assert "variadic_args=(True, True)" in text  # the segment mask (and T5's bias) go in as a bias with gradient
  else:  # lengths only: no bias unless T5's own
    assert f"variadic_args=({bias}, {bias})" in text
  if bias:
    assert jax.eval_shape(grads, q, k, k, b)[3].shape == (1, H, L, S)


def test_auto_picks_per_backend_and_call():
  pick = lambda backend, implementation="auto", **kw: attention.resolve(implementation, backend=backend, **{
      **dict(dtype=jnp.bfloat16, head_dim=64, dropout_active=False, dense_mask=False), **kw})
  assert pick("cpu") == "xla"
  assert pick("gpu") == "cudnn"
  assert pick("gpu", dtype=jnp.float32) == "xla"  # cuDNN attention needs 16-bit inputs
  assert pick("gpu", head_dim=260) == "xla"
  assert attention.cudnn_supports(jnp.bfloat16, 256, "9.0") and attention.cudnn_supports(jnp.bfloat16, 128, "8.0")
  assert not attention.cudnn_supports(jnp.bfloat16, 256, "8.0")  # an A100 takes at most 128
  assert pick("tpu") == "pallas_tpu"
  assert pick("tpu", dropout_active=True) == "xla"  # only the einsum path drops attention probabilities
  assert pick("gpu", dense_mask=True) == "xla"  # key/value-cache decode steps
  with pytest.raises(ValueError, match="config.model.attention='pallas_tpu' does not run on gpu"):
    pick("gpu", implementation="pallas_tpu")
  with pytest.raises(ValueError, match="config.model.attention='cudnn' needs config.model.dtype bfloat16"):
    attention.resolve("cudnn", backend="gpu", dtype=jnp.float32, head_dim=64, dropout_active=False,
                      dense_mask=False)


def test_the_attention_plan_says_what_each_phase_runs_and_why_dropout_keeps_training_on_the_einsum():
  t5_like = lambda **kw: build.Model(dataclasses.replace(helpers.tiny_model("encoder_decoder").config,
                                                         dtype=jnp.bfloat16, **{"attention": "auto", **kw}))
  plan, problem = t5_like(dropout_rate=0.0).attention_plan("gpu")
  assert problem is None and plan.startswith("'auto' on gpu: cudnn in training, cudnn in scoring, xla in key/value")
  plan, problem = t5_like(dropout_rate=0.1).attention_plan("gpu")  # a Hugging Face T5 checkpoint's dropout
  assert problem is None and "xla in training, cudnn in scoring" in plan
  assert "model.dropout_rate=0.1 drops attention probabilities" in plan and "--config.model.dropout_rate=0" in plan
  assert t5_like(dropout_rate=0.1).attention_plan("cpu")[0] == (
      "'auto' on cpu: xla in training, xla in scoring, xla in key/value-cache decoding")
  plan, problem = t5_like(attention="pallas_tpu").attention_plan("gpu")
  assert plan == "'pallas_tpu' on gpu: cannot run" and "does not run on gpu" in problem
  plan, problem = t5_like(attention="pallas_tpu").attention_plan()  # here: interpret mode
  assert problem is None and "pallas_tpu in training" in plan


def test_config_errors_name_the_key():
  with pytest.raises(ValueError, match=r"^config.model.attention='flash': choose one of \['xla'"):
    helpers.tiny_model("decoder", attention="flash")
  with pytest.raises(ValueError, match="config.model.attention='cudnn' has no dropout"):
    helpers.tiny_model("encoder_decoder", attention="cudnn", dropout_rate=0.1)
  helpers.tiny_model("encoder_decoder", attention="auto", dropout_rate=0.1)  # auto runs xla while dropping out
  assert "attention" in build.RUNTIME_FIELDS  # a checkpoint never fixes it
  section = configs.base().model
  section.kind, section.size, section.attention = "decoder", "tiny", "pallas_tpu"
  assert build.from_section(section).config.attention == "pallas_tpu"
  ckpt = build.from_section(section, checkpoint=helpers.tiny_model("decoder").config)
  assert ckpt.config.attention == "pallas_tpu"


def test_a_kernel_this_backend_cannot_run_is_a_user_error_before_anything_runs(monkeypatch):
  from instruct_jax import errors, workdir  # pylint: disable=g-import-not-at-top
  section = configs.base().model
  section.kind, section.size, section.attention = "decoder", "tiny", "pallas_tpu"
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  with pytest.raises(errors.UserError, match=r"^config.model.attention='pallas_tpu' does not run on gpu"):
    build.from_section(section)
  # A workdir trained with it still loads here, with 'auto' (the kernel is a runtime choice, not the weights').
  recorded = build.Model(dataclasses.replace(helpers.tiny_model("decoder").config, attention="pallas_tpu"))
  assert workdir.runnable_here(recorded).config.attention == "auto"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert workdir.runnable_here(recorded).config.attention == "pallas_tpu"


def _loss_and_grads(model, params, batch, packed=True):
  def loss_fn(p):
    logits = step.forward(model, p, batch, packed=packed)
    scale, denom = losses.token_scale_and_denominator(batch["decoder_loss_weights"], batch["decoder_segment_ids"],
                                                      "tokens")
    return losses.loss_and_metrics(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                                   scale_BL=scale, denominator=denom)[0]
  return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.mark.slow
@pytest.mark.parametrize("kind,layout", [("decoder", {}),
                                         ("encoder_decoder", dict(scan_layers=True, remat_policy="full"))],
                         ids=["decoder", "encoder_decoder-scan-remat"])
def test_model_loss_and_gradients_equal_xla_on_packed_batches(kind, layout):
  """Whole models on packed rows (padding included): loss and every gradient, T5's bias tables too."""
  model = helpers.tiny_model(kind, **layout)
  params = helpers.init_params(model)
  batch = helpers.make_batches(kind, helpers.random_examples(kind, 6, seed=4), pack=True, batch_size=2,
                               inputs_len=40, targets_len=24)[0]
  assert int(batch["decoder_segment_ids"].max()) >= 2
  ref_loss, ref_grads = _loss_and_grads(model, params, batch)
  for impl in FUSED:
    fused = build.from_config(dataclasses.replace(model.config, attention=impl))
    loss, grads = _loss_and_grads(fused, params, batch)
    assert helpers.rel_err(loss, ref_loss) < 1e-5, impl
    assert helpers.max_tree_rel_err(grads, ref_grads) < 1e-4, impl


@pytest.mark.parametrize("kind", ["decoder", pytest.param("encoder_decoder", marks=pytest.mark.slow)])
def test_rows_of_one_example_run_on_lengths_with_the_same_loss_and_gradients(kind, monkeypatch):
  """data.pack=False batches (one example per row, padded at its end) with packed=False: cuDNN's arguments are
  row lengths, not a mask (every attention of the model); loss and every gradient equal the einsum path's.
  Packed (the default), the same model hands cuDNN a mask."""
  calls = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
  model = helpers.tiny_model(kind)
  params = helpers.init_params(model, seed=5)
  batch = helpers.make_batches(kind, helpers.random_examples(kind, 2, seed=5), pack=False, batch_size=2,
                               inputs_len=24, targets_len=16)[0]
  assert int(batch["decoder_segment_ids"].max()) == 1 and (np.asarray(batch["decoder_segment_ids"]) == 0).any()
  ref_loss, ref_grads = _loss_and_grads(model, params, batch)
  fused = build.from_config(dataclasses.replace(model.config, attention="cudnn"))
  loss, grads = _loss_and_grads(fused, params, batch, packed=False)
  assert helpers.rel_err(loss, ref_loss) < 1e-5
  assert helpers.max_tree_rel_err(grads, ref_grads) < 1e-4
  per_layer = 1 if kind == "decoder" else 3  # T5: encoder self, decoder self, cross
  assert len(calls) == per_layer * 2  # two layers, traced once
  assert all("mask" not in kw and kw["key_value_seq_lengths"] is not None for kw in calls), calls
  calls.clear()
  _loss_and_grads(fused, params, batch)
  assert len(calls) == per_layer * 2 and all(kw["mask"] is not None and "query_seq_lengths" not in kw
                                             for kw in calls), calls


def _decode_logits(model, params, use_cache):
  P, steps = 8, 3
  prompts = np.zeros((2, P), np.int32)
  pad = np.array([3, 0], np.int32)
  prompts[0, 3:], prompts[1] = [5, 6, 7, 8, 9], np.arange(10, 18)
  if not model.left_pad_prompts:
    prompts[0] = np.roll(prompts[0], -3)
  stepper = model.stepper(params, prompt_len=P, max_new_tokens=steps + 1, pad_id=0, use_cache=use_cache)
  state, logits = jax.jit(stepper.init)(jnp.asarray(prompts), jnp.asarray(pad))
  out = [logits]
  step_fn = jax.jit(stepper.step)
  for t in range(steps):
    state, logits = step_fn(state, jnp.asarray([20 + t, 30 + t], jnp.int32), jnp.asarray(t))  # one compile
    out.append(logits)
  return np.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("kind,impl", [("encoder_decoder", "pallas_tpu"), ("decoder", "pallas_tpu"),
                                       ("encoder_decoder", "cudnn"), ("decoder", "cudnn")])
def test_cached_decoding_equals_recompute(kind, impl):
  """Recompute runs the fused path over the whole prefix; the cached steps run the einsum path."""
  model = helpers.tiny_model(kind, attention=impl)
  params = helpers.init_params(model, seed=3)
  np.testing.assert_allclose(_decode_logits(model, params, True), _decode_logits(model, params, False),
                             rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["causal_gqa", pytest.param("bidirectional_bias", marks=pytest.mark.slow)])
def test_pallas_tpu_per_device_blocks_on_a_mesh(case):
  """Under a (data, fsdp, tensor) mesh the kernels run per device (shard_map) and still equal xla."""
  from instruct_jax import sharding
  kw = {k: v for k, v in CASES[case].items() if k not in ("L", "S", "H", "N")}
  c = CASES[case]
  q, k, v, b = _inputs(c["L"], c["S"], c["H"], c["N"], bias=c["bias"])
  q, k, v = (jnp.concatenate([x, x[::-1]]) for x in (q, k, v))  # batch 4: two examples per data shard
  mask = _mask(c["L"], c["S"], kw["causal"], kw.get("window"))
  mask = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), mask)
  valid = np.asarray(mask.q_segments_BL > 0)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 2}, jax.devices()[:4])
  rules = sharding.get_rules("fsdp_tensor")

  def run(name):
    def f(q, k, v, b):
      with sharding.activation_sharding(mesh, rules):
        return attention.attend(q, k, v, mask, b, implementation=name)
    return np.asarray(jax.jit(f)(q, k, v, b))
  np.testing.assert_allclose(run("pallas_tpu")[valid], run("xla")[valid], rtol=2e-5, atol=2e-5)
