"""A tiny T5 (or, with arg "decoder", decoder-only) run for tests and smoke checks: seconds on a CPU.

    python -m instruct_jax.train --config configs/tiny.py --workdir /tmp/tiny
    python -m instruct_jax.train --config configs/tiny.py:decoder --workdir /tmp/tiny_decoder

Hardware: any CPU. Runtime: under a minute on 2 CPU cores. Expected result: the loss falls over 20 steps;
the evaluation is small and only checks that the path runs (the model is too small and too briefly
trained to score).
"""
import ml_collections

from instruct_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "t5", "decoder"):
    raise ValueError(f"configs/tiny.py takes 't5' or 'decoder', got {arg!r}")
  c = configs.base()
  c.total_steps = 20
  c.log_every = 1
  c.checkpoint_every = 5
  c.keep_checkpoints = 10
  if arg == "decoder":
    c.model.kind, c.model.size = "decoder", "tiny"
    c.model.overrides = ml_collections.ConfigDict(dict(d_model=32, d_ff=64, num_heads=2, num_kv_heads=1,
                                                       head_dim=16, num_layers=2))
  else:
    c.model.kind, c.model.size = "encoder_decoder", "tiny"
    c.model.overrides = ml_collections.ConfigDict(dict(d_model=32, d_ff=64, num_heads=2, head_dim=16,
                                                       num_encoder_layers=1, num_decoder_layers=1))
  c.tokenizer.vocab_size = 300
  c.tokenizer.train_examples = 2000
  c.data.mixture = "builtin_no_check"
  c.data.batch_size = 8
  c.data.inputs_length = 48
  c.data.targets_length = 24
  c.data.render.template_ids = (0, 1, 2, 3, 4, 5, 6, 7)
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 2
  c.optim.weight_decay = 0.01
  c.loss.z_loss = 1e-4
  c.eval.held_out_cluster = "check"
  c.eval.seen_templates = (0, 1, 2, 3, 4, 5, 6, 7)
  c.eval.unseen_templates = (8, 9, 10)
  c.eval.num_examples = 2
  c.eval.max_new_tokens = 8
  c.eval.batch_size = 16
  c.eval.before_training = False
  return c
