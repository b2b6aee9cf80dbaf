"""A chat format's special strings that a pretrained checkpoint's tokenizer lacks, added as new tokens.

    added = added_tokens.plan(fmt, tokenizer, checkpoint.config.vocab_size)   # None: nothing is missing
    tokenizer = added_tokens.extend_tokenizer(tokenizer, added, out_dir)      # the tokens get the next ids
    config = added.grow(checkpoint.config)                                    # vocab_size = added.rows
    weights = added_tokens.grow_params(weights, build.Model(config), added, mesh, rules)

Mistral-7B-v0.1's tokenizer has no <|im_start|> / <|im_end|>, so a ChatML run on it could not stop at the end of a
turn; Mistral-7B-OpenOrca added both as tokens 32000 and 32001 and grew the embeddings. `plan` finds the strings of
the format (`ChatFormat.specials`) that are not one token each; `extend_tokenizer` adds them with the next ids, as
USER_DEFINED pieces appended to a SentencePiece model proto (SentencePiece then never splits them) or as special
added tokens of a `tokenizers` file (`Tokenizer.add_special_tokens`). `grow_params` adds as many rows to every table
with a "vocab" axis (the token embedding, and the output layer when it is untied; T5's too) and sets the rows of the
new ids to the mean of the rows of the ids the tokenizer had: the common choice, which starts a new token where the
model's average token is, so its first logits and gradients are of the usual size. The other rows stay bitwise
as they were. A checkpoint whose table already has unused rows beyond its tokenizer (a vocabulary padded to a
multiple) gives the new ids those rows (set to the mean too) and grows only by what does not fit.
"""
from __future__ import annotations

import dataclasses
import pathlib

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp

from instruct_jax.convert.tensors import ConversionError
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class AddedTokens:
  """Tokens added to a checkpoint's tokenizer.

  Attributes:
    tokens: the strings, in id order.
    first_id: the id of tokens[0] (the source tokenizer's vocab_size).
    old_rows: rows of the checkpoint's embedding table (its vocab_size).
  """
  tokens: tuple[str, ...]
  first_id: int
  old_rows: int

  @property
  def ids(self) -> list[int]:
    return list(range(self.first_id, self.first_id + len(self.tokens)))

  @property
  def rows(self) -> int:
    """The embedding table's rows with the tokens: grown only by what the checkpoint's unused rows do not hold."""
    return max(self.old_rows, self.first_id + len(self.tokens))

  def grow(self, config):
    """A model config (T5Config / DecoderConfig) with the grown vocabulary."""
    return dataclasses.replace(config, vocab_size=self.rows)

  def describe(self) -> str:
    tokens = ", ".join(f"{t} (id {i})" for t, i in zip(self.tokens, self.ids))
    if self.rows > self.old_rows:
      rows = f"embedding rows {self.old_rows} -> {self.rows}"
    else:
      rows = f"in unused rows of the {self.old_rows}-row embedding (no growth)"
    return f"{tokens}; {rows}; their rows start as the mean of the existing rows"


def is_one_token(tokenizer: tokenizer_lib.Tokenizer, text: str) -> bool:
  """Whether `text` alone tokenizes to one token covering all of it (zero-width pieces, such as SentencePiece's
  dummy-prefix "▁", aside)."""
  ids, starts, ends = chat_lib.encode_with_offsets(tokenizer, text)
  wide = [k for k in range(len(ids)) if ends[k] > starts[k]]
  return len(wide) == 1 and starts[wide[0]] == 0 and ends[wide[0]] == len(text)


def missing(fmt: chat_lib.ChatFormat, tokenizer: tokenizer_lib.Tokenizer) -> tuple[str, ...]:
  """The special strings of `fmt` that are not one token of `tokenizer`, in the format's order."""
  return tuple(s for s in dict.fromkeys(fmt.specials) if s and not is_one_token(tokenizer, s))


def plan(fmt: chat_lib.ChatFormat | None, tokenizer: tokenizer_lib.Tokenizer, vocab_size: int) -> AddedTokens | None:
  """The tokens to add to `tokenizer` (of a checkpoint with `vocab_size` embedding rows) for `fmt`; None if none."""
  tokens = missing(fmt, tokenizer) if fmt is not None else ()
  if not tokens:
    return None
  return AddedTokens(tokens, tokenizer.vocab_size, vocab_size)


def extend_tokenizer(tokenizer: tokenizer_lib.Tokenizer, added: AddedTokens,
                     out_dir: str | pathlib.Path) -> tokenizer_lib.Tokenizer:
  """A copy of `tokenizer` in `out_dir` (`Tokenizer.save`) holding `added.tokens` with ids `added.ids`."""
  out_dir = pathlib.Path(out_dir)
  tokenizer.save(out_dir)
  if isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
    file = out_dir / tokenizer_lib.MODEL_FILENAME
    proto = sentencepiece_model_pb2.ModelProto.FromString(file.read_bytes())
    known = {p.piece for p in proto.pieces}
    for token in added.tokens:
      if token in known:  # an ordinary piece of that spelling: SentencePiece would refuse a second one
        raise ConversionError(f"{tokenizer.model_path}: {token!r} is already a piece (not a user-defined one), so it "
                              "cannot be added as a token of its own; use a chat format without it")
      piece = proto.pieces.add()
      piece.piece, piece.score, piece.type = token, 0.0, piece.USER_DEFINED
    file.write_bytes(proto.SerializeToString())
  else:
    tokenizers = tokenizer_lib._import_tokenizers()  # pylint: disable=protected-access
    file = out_dir / tokenizer_lib.HF_FILENAME
    tok = tokenizers.Tokenizer.from_file(str(file))
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in added.tokens])
    tok.save(str(file))
  grown = tokenizer_lib.load(out_dir)
  got = [chat_lib.encode_with_offsets(grown, t)[0].tolist() for t in added.tokens]
  if grown.vocab_size != added.first_id + len(added.tokens) or any(added.ids[k] not in ids for k, ids in
                                                                     enumerate(got)):
    raise ConversionError(f"{tokenizer.model_path}: adding {list(added.tokens)} gave ids {got} and {grown.vocab_size} "
                          f"ids in all, not the next ids {added.ids}")
  return grown


def grow_params(params, model, added: AddedTokens, mesh, rules):
  """`params` of the checkpoint (a base model's tree, tables of `added.old_rows` rows) for `model` (the grown
  config): each table with a "vocab" axis padded to `added.rows` along it, the new ids' rows set to the mean of the
  rows of the tokenizer's earlier ids, every other row and parameter unchanged; laid out as `model` on `mesh`."""
  specs = flax.traverse_util.flatten_dict(nn.get_partition_spec(model.param_shapes()))
  targets = flax.traverse_util.flatten_dict(model.abstract_params(mesh, rules))
  out = {}
  for path, x in flax.traverse_util.flatten_dict(params).items():
    axes = tuple(d for d, name in enumerate(specs[path]) if name == "vocab")
    out[path] = _grow(x, axes, targets[path], added) if axes else x
  return flax.traverse_util.unflatten_dict(out)


def _grow(x, axes: tuple[int, ...], target: jax.ShapeDtypeStruct, added: AddedTokens):
  first, n = added.first_id, len(added.tokens)

  def grow(x):
    for axis in axes:
      rows = jnp.moveaxis(x, axis, 0)
      if rows.shape[0] < added.rows:
        rows = jnp.concatenate([rows, jnp.zeros((added.rows - rows.shape[0], *rows.shape[1:]), rows.dtype)])
      mean = jnp.mean(rows[:first].astype(jnp.float32), axis=0).astype(rows.dtype)
      rows = rows.at[first:first + n].set(jnp.broadcast_to(mean, (n, *mean.shape)))
      x = jnp.moveaxis(rows, 0, axis)
    return x

  return jax.jit(grow, out_shardings=target.sharding)(x)
