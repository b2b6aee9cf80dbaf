"""Train a SentencePiece vocabulary on a mixture's rendered text (every template style, so few-shot, options and
inverted prompts are covered too):

    python -m instruct_jax.data.vocab --mixture builtin --vocab_size 1000 --out /tmp/tok

A sweep trains one this way and shares it between its points (`instruct_jax.sweep`); a run without a tokenizer
trains its own into WORKDIR/tokenizer (`instruct_jax.plan`).
"""
from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from instruct_jax import errors
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import render
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  paths = tasks_lib.DataPaths(superni_dir=f.superni_dir, tfds_data_dir=f.tfds_data_dir)
  task_catalogue, mixture_catalogue = mixtures_lib.catalogues(paths)
  rates = mixtures_lib.task_rates(f.mixture, task_catalogue, mixture_catalogue)
  cfg = render.RenderConfig(few_shot_rate=0.3, options_rate=0.5, inversion_rate=0.1, cot_rate=0.1)
  texts = render.sample_texts(rates, task_catalogue, cfg, n=f.num_examples, seed=f.seed)
  tok = tokenizer_lib.train(texts, vocab_size=f.vocab_size, out_dir=f.out)
  print(f"wrote {tok.model_path}: {tok.vocab_size} pieces from {f.num_examples} examples of {f.mixture!r} "
        f"(pad {tok.pad_id}, eos {tok.eos_id}, unk {tok.unk_id}, bos {tok.bos_id})")


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module defines none)."""
  flags.DEFINE_string("mixture", None, "Mixture (or task) whose rendered text trains the vocabulary.")
  flags.DEFINE_integer("vocab_size", 1000, "Upper bound on the number of pieces.")
  flags.DEFINE_string("out", None, "Output directory; the model is written as OUT/spm.model.")
  errors.local_path_flags("out")
  flags.DEFINE_integer("num_examples", 20000, "Rendered examples to train on.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("superni_dir", None, "natural-instructions checkout (tasks/ and splits/).")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir holding prepared datasets.")
  flags.mark_flags_as_required(["mixture", "out"])


if __name__ == "__main__":
  define_flags()
  errors.run(main)
