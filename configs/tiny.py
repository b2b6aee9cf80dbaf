"""A tiny T5 (or, with arg "decoder", decoder-only) run for tests and smoke checks: seconds on a CPU.

    python -m instruct_jax.train --config configs/tiny.py --workdir /tmp/tiny
    python -m instruct_jax.train --config configs/tiny.py:decoder --workdir /tmp/tiny_decoder

Runtime: under a minute on 2 CPU cores. Expected result: the loss falls over 20 steps; the evaluation
is small and only checks that the path runs (the model is too small and too briefly trained to score).
"""
import ml_collections

from instruct_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = configs.sibling(__file__, "quickstart.py")
  c.total_steps = 20
  c.log_every = 1
  c.checkpoint_every = 5
  c.keep_checkpoints = 10
  c.model.size = "tiny"
  c.model.overrides = dict(d_model=32, d_ff=64, num_heads=2, head_dim=16, num_encoder_layers=1,
                           num_decoder_layers=1)
  if arg == "decoder":
    c.model.kind = "decoder"
    c.model.overrides = dict(d_model=32, d_ff=64, num_heads=2, num_kv_heads=1, head_dim=16, num_layers=2)
  c.tokenizer.vocab_size = 300
  c.tokenizer.train_examples = 2000
  c.data.batch_size = 8
  c.data.inputs_length = 48
  c.data.targets_length = 24
  c.mesh = dict(data=-1, fsdp=1, tensor=1)
  c.optim.warmup_steps = 2
  c.eval.num_examples = 2
  c.eval.max_new_tokens = 8
  c.eval.batch_size = 16
  c.eval.before_training = False
  return c
