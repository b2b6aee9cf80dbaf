"""The model FLOPs behind the trainer's train/mfu and the benchmark's MFU (instruct_jax/flops.py)."""
import jax
import pytest

from instruct_jax import flops, metrics, objectives, optim, sharding, step
from instruct_jax.models import build, decoder, t5
from tests import helpers

_WIDE = dict(d_model=256, d_ff=1024, num_heads=4, head_dim=64, vocab_size=1024)  # matmul-bound at these rows


def _xla_flops(model, batch):
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  rules = sharding.get_rules("data_parallel")
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-4, schedule="constant", grad_clip_norm=0.0)
  tx = optim.make_optimizer(ocfg)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  train = step.jit_train_step(model, tx, objectives.SFT(), optim.make_schedule(ocfg), mesh, rules, state_sh)
  cost = train.lower(state, batch, jax.random.key(0)).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


@pytest.mark.parametrize("kind,config", [
    pytest.param("decoder", decoder.config_for("tiny", num_kv_heads=2, num_layers=2, tie_embeddings=True, **_WIDE),
                 marks=pytest.mark.slow),
    pytest.param("decoder", decoder.config_for("tiny", num_kv_heads=4, num_layers=3, tie_embeddings=False, **_WIDE),
                 marks=pytest.mark.slow),
    pytest.param("encoder_decoder", t5.config_for("tiny", num_encoder_layers=2, num_decoder_layers=2, **_WIDE),
                 marks=pytest.mark.slow),
], ids=["decoder-tied", "decoder-untied", "t5"])
def test_model_flops_are_what_xla_counts_for_the_step_less_its_elementwise_work(kind, config):
  """XLA's count of the compiled train step adds the elementwise work and AdamW to the model's matmuls (and
  computes causal attention's masked half): a few percent above, never below, the analytic count."""
  model = build.from_config(config)
  batch = helpers.make_batches(kind, helpers.random_examples(kind, 8, seed=1, max_in=90, max_out=30), pack=False,
                               batch_size=4, inputs_len=96, targets_len=32)[0]
  batch = {k: v for k, v in batch.items() if k in model.input_features or k.startswith("decoder_")}
  analytic = flops.train_step_flops(model, batch_size=4, inputs_length=96, targets_length=32)
  ratio = _xla_flops(model, batch) / analytic
  assert 1.0 <= ratio <= 1.12, ratio


def test_attention_and_batch_terms_scale_as_the_formula_says():
  model = build.from_config(decoder.config_for("tiny", **_WIDE))
  f = lambda b, i, t: flops.train_step_flops(model, batch_size=b, inputs_length=i, targets_length=t)
  assert f(8, 96, 32) == pytest.approx(2 * f(4, 96, 32))
  # Doubling the row doubles the matmul term and quadruples the attention term (6 x layers x d_attn x T^2).
  cfg = model.config
  attention = lambda T: 6 * cfg.num_layers * cfg.num_heads * cfg.head_dim * T * T
  assert f(1, 192, 64) - 2 * f(1, 96, 32) == pytest.approx(attention(256) - 2 * attention(128))


def test_peaks_by_device_kind():
  assert flops.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
  assert flops.peak_tflops("NVIDIA H200") == 989.0
  assert flops.peak_tflops("TPU v5 lite") == 197.0 and flops.peak_tflops("TPU v5p") == 459.0
  assert flops.peak_tflops("cpu") is None


def test_the_step_window_reports_model_flops_per_device_and_mfu():
  window = metrics.StepWindow(1, flops_per_step=4e15, devices=8, peak_tflops=500.0)
  sums = {"loss": 1.0, "nll_sum": 2.0, "weight_sum": 2.0, "correct": 1.0, "learning_rate": 1e-4, "grad_norm": 1.0,
          "param_norm": 1.0}
  for _ in range(2):
    window.add(dict(sums), (0.0, 100, 80, None))
  window.t_first, window.t_last = 10.0, 14.0  # two steps in 4 s: 2e15 FLOP/s in all, 250 TFLOP/s per device
  out = window.summarize(["t"], None)
  assert out["model_tflops_per_device"] == pytest.approx(250.0) and out["mfu"] == pytest.approx(0.5)
  no_peak = metrics.StepWindow(1, flops_per_step=4e15, devices=8)  # a CPU: FLOP/s, but no MFU
  no_peak.add(dict(sums), (0.0, 100, 80, None))
  no_peak.t_first, no_peak.t_last = 10.0, 12.0
  out = no_peak.summarize(["t"], None)
  assert out["model_tflops_per_device"] == pytest.approx(250.0) and "mfu" not in out
