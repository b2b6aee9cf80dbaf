"""Model FLOPs of a train step, and the device peaks that turn them into MFU (model FLOPs utilisation).

    flops.train_step_flops(model, batch_size=64, inputs_length=1536, targets_length=512)   # one global step
    flops.peak_tflops(jax.devices()[0].device_kind)                                        # 989.0 on an H100

The count is the model's, not the compiler's: forward + backward = 3 x forward, and a matmul with an
n-parameter weight costs 2n FLOPs per token, so only weights used as matmuls count (an untied input embedding
table does not; a tied one does, as the output layer). Attention adds its two matmuls (QK^T and PV, 2 x 2 x
d_attn FLOPs per query and key), over every key for bidirectional attention and over half of them (the ones a
causal query sees, on average) for causal attention:

    decoder: tokens x (6 x P + 6 x layers x d_attn x T)                                    T = inputs + targets
    T5:      enc_tokens x (6 x P_enc + 12 x enc_layers x d_attn x I)
           + dec_tokens x (6 x P_dec + 6 x dec_layers x d_attn x O + 12 x dec_layers x d_attn x I)

with d_attn = heads x head_dim, P the parameters of that stack (the output layer belongs to the decoder), I
and O the encoder and decoder row lengths. Tokens are row slots, padding included: the trainer's
`train/nonpad_share` says how many of them were real. LoRA runs are counted as full fine-tuning, although
frozen weights get no weight gradient (4 x P of work per token where the count says 6 x P). XLA's own count of the compiled step is a few percent higher on
matmul-bound shapes (it adds the elementwise work and the optimizer; tests/test_flops.py) and higher still
for long causal rows, whose masked half the einsum path computes anyway.
"""
from __future__ import annotations

from instruct_jax.models import build

# Dense bf16 peak TFLOP/s of one device, matched against jax's device_kind (first match wins).
PEAK_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
               ("TPU v5e", 197.0), ("TPU v5p", 459.0), ("TPU v5", 459.0), ("TPU v6 lite", 918.0))


def peak_tflops(device_kind: str) -> float | None:
  """The device's dense bf16 peak (TFLOP/s), or None for a kind not in PEAK_TFLOPS (a CPU, among others)."""
  return next((tf for name, tf in PEAK_TFLOPS if name.lower() in device_kind.lower()), None)


def train_step_flops(model: build.Model, *, batch_size: int, inputs_length: int, targets_length: int) -> float:
  """Model FLOPs of one train step over the global batch (the module docstring gives the formula; each model
  kind's part of it is its module's `train_flops_per_row`)."""
  return float(batch_size * model.train_flops_per_row(inputs_length, targets_length))
