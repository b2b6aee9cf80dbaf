"""SentencePiece tokenizer: load an existing model or train one on a mixture's rendered text.

Loading works for T5's `spiece.model` (pad 0, end-of-text 1, unk 2, no begin-of-text) and LLaMA's
`tokenizer.model` (unk 0, begin 1, end 2, no pad: padding then uses id 0, which carries zero loss
weight). Models trained here use T5's ids plus a begin-of-text id, so one vocabulary serves both model
kinds: pad 0, end-of-text 1, unk 2, begin-of-text 3.

Train a vocabulary on a mixture's rendered examples:

    python -m instruct_jax.data.tokenizer --mixture builtin --vocab_size 1000 --out /tmp/spm
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
MODEL_FILENAME = "spm.model"


class Tokenizer:
  """A thin, picklable wrapper around a SentencePiece model with the ids the pipeline needs."""

  def __init__(self, model_path: str | os.PathLike):
    self.model_path = str(model_path)
    if not os.path.isfile(self.model_path):
      raise FileNotFoundError(f"sentencepiece model not found: {self.model_path}")
    self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.unk_id = self._sp.unk_id()
    self.bos_id = self._sp.bos_id()
    # A model without a pad piece (LLaMA) pads with 0; padded positions carry zero loss weight.
    self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else 0
    if self.eos_id < 0:
      raise ValueError(f"{self.model_path}: the model defines no end-of-text piece")
    if self.eos_id == self.pad_id:
      raise ValueError(f"{self.model_path}: end-of-text id equals the pad id ({self.eos_id}); the stop "
                       "token would never be learned")

  def __getstate__(self):
    return {"model_path": self.model_path}

  def __setstate__(self, state):
    self.__init__(state["model_path"])

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text` (no end-of-text; the feature transforms add it)."""
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[np.ndarray]:
    """Token ids of each text. sentencepiece starts threads per call when num_threads > 1, which only
    pays off for long lists."""
    return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts), num_threads=num_threads)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, stopping at the first end-of-text and skipping padding."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i != self.pad_id and 0 <= i < self.vocab_size:
        out.append(i)
    return self._sp.decode(out)

  def piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def train(texts: Iterable[str], *, vocab_size: int, out_dir: str | os.PathLike,
          model_type: str = "unigram", character_coverage: float = 1.0,
          byte_fallback: bool = False) -> Tokenizer:
  """Trains a SentencePiece model on `texts` and writes `out_dir/spm.model` (and `.vocab`).

  `vocab_size` is an upper bound: a small corpus yields a smaller vocabulary rather than an error.
  Digits are split into single-digit pieces so numbers tokenize the same way everywhere.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  prefix = out_dir / MODEL_FILENAME.removesuffix(".model")
  lines = (line for text in texts for line in text.splitlines() if line.strip())
  spm.SentencePieceTrainer.train(
      sentence_iterator=lines, model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
      character_coverage=character_coverage, byte_fallback=byte_fallback, hard_vocab_limit=False,
      split_digits=True, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
      pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", bos_piece="<s>",
      input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2)
  return Tokenizer(out_dir / MODEL_FILENAME)


def main(argv: Sequence[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  # Imported here so that loading a tokenizer never pulls in the task catalogue.
  from instruct_jax.data import mixtures as mixtures_lib  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import render  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  paths = tasks_lib.DataPaths(superni_dir=f.superni_dir, tfds_data_dir=f.tfds_data_dir)
  task_catalogue, mixture_catalogue = mixtures_lib.catalogues(paths)
  rates = mixtures_lib.task_rates(f.mixture, task_catalogue, mixture_catalogue)
  # Render every template style so the vocabulary covers few-shot, options and inverted prompts too.
  cfg = render.RenderConfig(few_shot_rate=0.3, options_rate=0.5, inversion_rate=0.1, cot_rate=0.1)
  texts = render.sample_texts(rates, task_catalogue, cfg, n=f.num_examples, seed=f.seed)
  tok = train(texts, vocab_size=f.vocab_size, out_dir=f.out)
  print(f"wrote {tok.model_path}: {tok.vocab_size} pieces from {f.num_examples} examples of {f.mixture!r} "
        f"(pad {tok.pad_id}, eos {tok.eos_id}, unk {tok.unk_id}, bos {tok.bos_id})")


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module defines none)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("mixture", None, "Mixture (or task) whose rendered text trains the vocabulary.")
  flags.DEFINE_integer("vocab_size", 1000, "Upper bound on the number of pieces.")
  flags.DEFINE_string("out", None, "Output directory; the model is written as OUT/spm.model.")
  flags.DEFINE_integer("num_examples", 20000, "Rendered examples to train on.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("superni_dir", None, "natural-instructions checkout (tasks/ and splits/).")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir holding prepared datasets.")
  flags.mark_flags_as_required(["mixture", "out"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main)
