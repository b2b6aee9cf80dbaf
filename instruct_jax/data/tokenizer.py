"""Tokenizers: SentencePiece models and Hugging Face `tokenizer.json` files behind one interface.

Two backends share the `Tokenizer` interface (ids, `encode`, `decode`, `save`, `save_for_hf`); `load(path)`
picks one from a file or a directory:

* `SentencePieceTokenizer` reads a `.model` file: T5's `spiece.model` (pad 0, end-of-text 1, unk 2, no
  begin-of-text), LLaMA's `tokenizer.model` (unk 0, begin 1, end 2, no pad: padding then uses id 0, which
  carries zero loss weight) or one trained here. Models trained here use T5's ids plus a begin-of-text id, so
  one vocabulary serves both model kinds: pad 0, end-of-text 1, unk 2, begin-of-text 3.
* `HFTokenizer` reads a `tokenizer.json` for the Hugging Face `tokenizers` library, such as Llama-3's
  byte-level BPE. Its special tokens come from the files next to it, the first file naming a field deciding
  (an explicit null there means "none"): `tokenizer_config.json` and `special_tokens_map.json` (`bos_token`,
  `eos_token`, `pad_token`, `unk_token`), then `config.json` and `generation_config.json` (`bos_token_id`,
  `eos_token_id`, of which a list gives its first, `pad_token_id`). Llama-3 base models: begin
  `<|begin_of_text|>`, end `<|end_of_text|>`, no pad.

`encode` never adds special tokens; the feature transforms do, by the project's convention: a T5 encoder reads
`encode(text) + [eos]` (its decoder starts from id 0), a decoder-only model reads `[bos] + encode(text)` and
trains on `[bos] + instruction + output + [eos]`, where `adds_bos` says the tokenizer begins a text with its
begin-of-text token (its own post-processor adds one, as Llama's and Gemma's do; Qwen's and SmolLM2's add none,
and their rows start with the instruction's first token). A chat rendering is read as the template wrote it.

`save_for_hf(out_dir, family)` writes the tokenizer so that `transformers.AutoTokenizer.from_pretrained(out_dir)`
(checked against transformers 5) follows that convention: `hf(text)["input_ids"]` is `encode(text) + [eos]`
for "t5" and `[bos] + encode(text)` (`encode(text)` without `adds_bos`) for "decoder", and
`hf.decode(ids, skip_special_tokens=True)` equals `decode(ids)`. What transformers needs:

* T5 from a SentencePiece model: `spiece.model` with `tokenizer_class` `T5Tokenizer`, `extra_ids` 0 (no
  sentinels beyond our vocabulary) and `legacy` true (SentencePiece's own behaviour, for transformers 4).
  transformers 5 rebuilds T5 tokenizers with a fixed pipeline (split on any whitespace, unk id 2, no byte
  fallback, a unigram model), which matches only T5-like models: a unigram model with unk 2, a pad piece, no
  byte or user-defined pieces and a normalizer that folds every whitespace run into one space (as `train`
  makes). Other models (and any when `protobuf`, which reading the model type needs, is missing) are written
  like the decoder-only ones below, with the end-of-text token appended instead of the begin-of-text.
* LLaMA/Mistral from a SentencePiece model: `tokenizer.model` with `tokenizer_class` `PreTrainedTokenizerFast`,
  `add_bos_token` true, `add_eos_token` false and `legacy` true. transformers then converts the model following
  its own normalizer settings; `LlamaTokenizer` would not do: in transformers 5 it always builds a byte-fallback
  BPE with a Metaspace pre-tokenizer, which splits unigram models and leading spaces differently.
* From a `tokenizer.json`: a copy, with `tokenizer_class` `PreTrainedTokenizerFast`, the special tokens, and
  `add_bos_token`/`add_eos_token` set for the family. When the file's own post-processor does not already add
  the family's token (Llama-3's TemplateProcessing adds `<|begin_of_text|>`), one is written, so tools that read
  only `tokenizer.json` agree too.

`clean_up_tokenization_spaces` is false in every export (Llama-3 ships it true, which would change decoded text).
Whitespace agrees, runs of spaces, tabs, newlines and leading or trailing spaces included: T5Tokenizer's split
matches models that fold whitespace, and the general conversion replays the model's own whitespace settings.
Known differences between SentencePiece and the transformers export:

* Unknown pieces encode alike; `decode` drops the unk id as transformers does (SentencePiece's own decoder would
  show " ⁇ ").
* Text holding a special token's string, such as "</s>" or "<|end_of_text|>": SentencePiece encodes it as
  ordinary text, transformers (and so `HFTokenizer`, which keeps the `tokenizers` default) as the special token.

Train a vocabulary on a mixture's rendered examples (`vocab.py`):

    python -m instruct_jax.data.vocab --mixture builtin --vocab_size 1000 --out /tmp/spm
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import sentencepiece as spm

from instruct_jax import errors


class TokenizerError(errors.UserError, ValueError):
  """A tokenizer file that cannot be used as given; the message names the file (and field)."""


class TokenizerNotFound(errors.UserError, FileNotFoundError):
  """No tokenizer where one was expected; the message names the path and what was looked for."""

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
MODEL_FILENAME = "spm.model"
HF_FILENAME = "tokenizer.json"
CHAT_TEMPLATE_FILENAME = "chat_template.jinja"  # as transformers 5 saves a tokenizer's chat template
SENTENCEPIECE_FILENAMES = (MODEL_FILENAME, "spiece.model", "tokenizer.model")
HF_FAMILIES = ("t5", "decoder")  # how rows begin and end: inputs + EOS, or [BOS] + text

_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # name tokens: bos_token, ...
_ID_FILES = ("config.json", "generation_config.json")  # give ids: bos_token_id, ...
_ROLES = ("bos", "eos", "pad", "unk")


class Tokenizer:
  """The interface the pipeline uses; `SentencePieceTokenizer` and `HFTokenizer` implement it.

  Attributes:
    model_path: the main file (a SentencePiece `.model` or a `tokenizer.json`).
    vocab_size: the number of ids, added and special tokens included.
    pad_id: the pad id; when `has_pad` is false it is 0, only a filler that carries zero loss weight.
    eos_id: the end-of-text id.
    bos_id, unk_id: begin-of-text and unknown ids, -1 when there is none.
    has_pad: whether the tokenizer defines a real pad token.
    adds_bos: whether a decoder row begins with bos_id (the tokenizer's own post-processor adds it).

  Instances pickle by path (grain worker processes receive them pickled). `load(path)` picks the backend.
  """

  model_path: str
  vocab_size: int
  pad_id: int
  eos_id: int
  bos_id: int
  unk_id: int
  has_pad: bool

  @property
  def adds_bos(self) -> bool:
    return self.bos_id >= 0

  def __reduce__(self):
    return type(self), (self.model_path,)

  def _check_ids(self) -> None:
    """Rejects a tokenizer without an end-of-text id. A pad id equal to it is fine (SmolLM2, many Llama-3 and
    Mistral fine-tunes): padding is masked by loss weights and segment ids, never by its id."""
    if self.eos_id < 0:
      raise TokenizerError(f"{self.model_path}: the tokenizer defines no end-of-text piece")

  def encode(self, text: str) -> np.ndarray:
    """Token ids of `text`, int32, without special tokens (the feature transforms add them)."""
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[np.ndarray]:
    """Token ids of each text."""
    del num_threads
    return [self.encode(text) for text in texts]

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, starts, ends) of `text`: like `encode`, but special strings in the text (begin- and end-of-text,
    added tokens) become their ids, as transformers tokenizes rendered chat templates, and each token comes with
    the character span of `text` it covers (the chat rendering uses them to find the scored tokens)."""
    raise NotImplementedError

  def special_strings(self) -> tuple[str, ...]:
    """Strings that are one special token each (begin/end-of-text, added special tokens)."""
    return tuple(self.piece(i) for i in (self.bos_id, self.eos_id) if i >= 0)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`, stopping at the first end-of-text.

    Special tokens (begin-of-text, unknown and the like) and ids outside [0, vocab_size) are skipped, and so is
    the pad id when the tokenizer has a real pad token (otherwise id 0 is an ordinary piece), as transformers'
    `decode(ids, skip_special_tokens=True)` does. A leading begin-of-text is dropped before looking for the end,
    so a tokenizer whose begin and end tokens are one still decodes rows.
    """
    ids = [int(i) for i in ids]
    if ids and ids[0] == self.bos_id:
      ids = ids[1:]
    kept = []
    for i in ids:
      if i == self.eos_id:
        break
      if (self.has_pad and i == self.pad_id) or i == self.unk_id or not 0 <= i < self.vocab_size:
        continue
      kept.append(i)
    return self._decode(kept)

  def _decode(self, ids: list[int]) -> str:
    raise NotImplementedError

  def piece(self, i: int) -> str:
    """The vocabulary entry of id `i`."""
    raise NotImplementedError

  def save(self, out_dir: str | os.PathLike) -> list[str]:
    """Writes a self-contained copy into `out_dir`; `load(out_dir)` gives the same tokenizer and special ids (and
    `chat_template()` the same template). Returns the names of the files written."""
    raise NotImplementedError

  def chat_template(self) -> str | None:
    """The Jinja chat template beside the tokenizer's file: chat_template.jinja, else tokenizer_config.json's
    chat_template (a string, or a list of {name, template} whose "default" is taken); None without one."""
    folder = pathlib.Path(self.model_path).parent
    if (folder / CHAT_TEMPLATE_FILENAME).is_file():
      return (folder / CHAT_TEMPLATE_FILENAME).read_text(encoding="utf-8")
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
      template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}.get("default")
    return template if isinstance(template, str) and template.strip() else None

  def _save_chat_template(self, out_dir: pathlib.Path) -> list[str]:
    template = self.chat_template()
    if template is None:
      return []
    (out_dir / CHAT_TEMPLATE_FILENAME).write_text(template, encoding="utf-8")
    return [CHAT_TEMPLATE_FILENAME]

  def save_for_hf(self, out_dir: str | os.PathLike, family: str) -> list[str]:
    """Writes the tokenizer for `transformers.AutoTokenizer.from_pretrained(out_dir)`, set up to tokenize like
    the pipeline does for `family` ("t5": ids + [eos]; "decoder": [bos] + ids, or ids without `adds_bos`).
    Returns the names of
    the files written (tokenizer files, `tokenizer_config.json`, `special_tokens_map.json`)."""
    raise NotImplementedError

  def _special_tokens(self) -> dict[str, str | None]:
    """`bos_token` ... `unk_token` as transformers names them: the pieces of the special ids, None when absent."""
    ids = {"bos": self.bos_id, "eos": self.eos_id, "unk": self.unk_id, "pad": self.pad_id if self.has_pad else -1}
    return {f"{role}_token": (self.piece(i) if i >= 0 else None) for role, i in ids.items()}

  def _check_family(self, family: str) -> str:
    if family not in HF_FAMILIES:
      raise TokenizerError(f"unknown row format {family!r}; expected one of {', '.join(HF_FAMILIES)}")
    return family


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model (`.model` file)."""

  def __init__(self, model_path: str | os.PathLike):
    self.model_path = str(model_path)
    if not os.path.isfile(self.model_path):
      raise TokenizerNotFound(f"sentencepiece model not found: {self.model_path}")
    try:
      self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
    except (RuntimeError, OSError) as e:
      raise TokenizerError(f"{self.model_path}: not a SentencePiece model ({e})") from e
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.unk_id = self._sp.unk_id()
    self.bos_id = self._sp.bos_id()
    # A model without a pad piece (LLaMA) pads with 0; padded positions carry zero loss weight.
    self.has_pad = self._sp.pad_id() >= 0
    self.pad_id = self._sp.pad_id() if self.has_pad else 0
    self._check_ids()

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), dtype=np.int32)

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # SentencePiece extracts user-defined pieces itself; control pieces (<s>, </s>) are split out here.
    specials = {self.piece(i): i for i in (self.bos_id, self.eos_id) if i >= 0}
    pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
    ids, starts, ends = [], [], []
    pos = 0
    for m in [*pattern.finditer(text), None]:
      stop = m.start() if m is not None else len(text)
      if stop > pos:
        chunk = text[pos:stop]
        char_of_byte = np.cumsum([0] + [len(c.encode("utf-8")) for c in chunk])  # byte offset of each char
        for p in self._sp.encode(chunk, return_type="proto").pieces:
          ids.append(p.id)
          starts.append(pos + int(np.searchsorted(char_of_byte, p.begin, side="right")) - 1)
          ends.append(pos + int(np.searchsorted(char_of_byte, p.end, side="left")))
      if m is not None:
        ids.append(specials[m.group(0)])
        starts.append(m.start())
        ends.append(m.end())
        pos = m.end()
    return np.asarray(ids, np.int32), np.asarray(starts, np.int64), np.asarray(ends, np.int64)

  def special_strings(self) -> tuple[str, ...]:
    try:
      from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
      proto = sentencepiece_model_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
    except Exception:  # pylint: disable=broad-except
      return super().special_strings()  # protobuf is missing: user-defined pieces are not listed
    return (*super().special_strings(), *(p.piece for p in proto.pieces if p.type == p.USER_DEFINED))

  def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[np.ndarray]:
    """Token ids of each text. sentencepiece starts threads per call when num_threads > 1, which only pays off
    for long lists."""
    return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts), num_threads=num_threads)]

  def _decode(self, ids: list[int]) -> str:
    # SentencePiece drops the leading spaces its normalizer would fold (all of them where it folds whitespace);
    # transformers (the Metaspace decoder of T5 and LLaMA tokenizers) drops only the one its encoder prepended, so
    # "▁ ▁ ▁Re" decodes to "  Re" there. Decode as transformers does.
    lead = 0
    for i in ids:
      piece = self._sp.id_to_piece(i)
      rest = piece.lstrip("\u2581")
      lead += len(piece) - len(rest)
      if rest and not self._sp.is_control(i):
        break
    text = self._sp.decode(ids)  # control pieces (begin-of-text, ...) decode to nothing
    return " " * (lead - 1) + text.lstrip(" ") if lead else text

  def piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def save(self, out_dir: str | os.PathLike) -> list[str]:
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = self._save_chat_template(out_dir)
    _copy(self.model_path, out_dir / MODEL_FILENAME)  # the name `load` looks for first
    return [MODEL_FILENAME, *template]

  def save_for_hf(self, out_dir: str | os.PathLike, family: str) -> list[str]:
    family = self._check_family(family)
    out_dir = pathlib.Path(out_dir)
    if (out_dir / HF_FILENAME).exists():
      raise TokenizerError(f"{out_dir / HF_FILENAME} exists: transformers would read it instead of the SentencePiece "
                       "model; write into an empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens = self._special_tokens()
    config: dict[str, Any] = {}
    if family == "t5" and self._fits_t5_tokenizer():
      name = "spiece.model"
      config.update(tokenizer_class="T5Tokenizer", extra_ids=0, legacy=True)
    else:
      name = "tokenizer.model"
      config.update(tokenizer_class="PreTrainedTokenizerFast", legacy=True,
                    add_bos_token=family != "t5" and self.adds_bos, add_eos_token=family == "t5")
    _copy(self.model_path, out_dir / name)
    config.update(tokens, clean_up_tokenization_spaces=False)
    return [name, *_write_hf_configs(out_dir, config, tokens)]

  def _fits_t5_tokenizer(self) -> bool:
    """Whether transformers' T5Tokenizer, which rebuilds a fixed pipeline around the vocabulary, encodes like
    this model: unigram, unk 2, a pad piece, no byte pieces or user-defined pieces, whitespace runs folded."""
    try:
      from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
      proto = sentencepiece_model_pb2.ModelProto.FromString(self._sp.serialized_model_proto())
    except Exception:  # pylint: disable=broad-except
      return False  # protobuf is missing: fall back to the general export
    unigram = proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    plain = not any(p.type in (p.BYTE, p.USER_DEFINED) for p in proto.pieces)
    folds_whitespace = self._sp.normalize(" a \t\n\r\f\vb  c ") == "\u2581a\u2581b\u2581c"
    return unigram and plain and folds_whitespace and self.unk_id == 2 and self.has_pad


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizers` file (`tokenizer.json`), special tokens read from the files next to it."""

  def __init__(self, model_path: str | os.PathLike):
    self.model_path = str(model_path)
    if not os.path.isfile(self.model_path):
      raise TokenizerNotFound(f"tokenizer.json not found: {self.model_path}")
    tokenizers = _import_tokenizers()
    try:
      self._tok = tokenizers.Tokenizer.from_file(self.model_path)
    except Exception as e:  # pylint: disable=broad-except
      raise TokenizerError(f"{self.model_path}: not a Hugging Face tokenizers file ({e})") from e
    # The pipeline pads and truncates itself.
    self._tok.no_padding()
    self._tok.no_truncation()
    ids, _ = self._special_ids()
    self.vocab_size = max([self._tok.get_vocab_size(with_added_tokens=True), *(i + 1 for i in ids.values())])
    self.bos_id, self.eos_id, self.unk_id = ids.get("bos", -1), ids.get("eos", -1), ids.get("unk", -1)
    self.has_pad = "pad" in ids
    self.pad_id = ids.get("pad", 0)
    if self.eos_id < 0:
      raise TokenizerError(f"{self.model_path}: the tokenizer defines no end-of-text token (looked for eos_token in "
                       f"{', '.join(_TOKEN_FILES)} and eos_token_id in {', '.join(_ID_FILES)} next to it)")
    self._check_ids()
    # What transformers 5 does too: a tokenizer.json's post-processor alone decides (add_bos_token is not read).
    self._adds_bos = self.bos_id >= 0 and self._tok.encode("a").ids[:1] == [self.bos_id]

  @property
  def adds_bos(self) -> bool:
    return self._adds_bos

  def _special_ids(self) -> tuple[dict[str, int], dict[str, str]]:
    """Special ids by role ("bos", ...) and where each came from; the first file naming a role decides."""
    folder = pathlib.Path(self.model_path).parent
    found: dict[str, int | None] = {}
    sources: dict[str, str] = {}
    for name in _TOKEN_FILES:
      config = _read_json(folder / name)
      added = {}
      for i, token in (config.get("added_tokens_decoder") or {}).items():
        content = token.get("content") if isinstance(token, dict) else token
        if isinstance(content, str):
          added[content] = int(i)
      for role in _ROLES:
        key = f"{role}_token"
        if role in found or key not in config:
          continue
        token = config[key]
        if isinstance(token, dict):
          token = token.get("content")
        sources[role] = f"{folder / name}: {key}"
        if token is None:
          found[role] = None
          continue
        if not isinstance(token, str):
          raise TokenizerError(f"{sources[role]} should be a string or an object with a 'content' string, "
                               f"not {token!r}")
        i = self._tok.token_to_id(token)
        i = added.get(token) if i is None else i
        if i is None:
          raise TokenizerError(f"{sources[role]} {token!r} is not in the vocabulary of {self.model_path}")
        found[role] = i
    size = self._tok.get_vocab_size(with_added_tokens=True)
    for name in _ID_FILES:
      config = _read_json(folder / name)
      for role in ("bos", "eos", "pad"):
        key = f"{role}_token_id"
        if role in found or key not in config:
          continue
        i = config[key]
        if isinstance(i, list):  # several stop tokens: the first is the end-of-text
          i = i[0] if i else None
        sources[role] = f"{folder / name}: {key}"
        if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size):
          raise TokenizerError(f"{sources[role]} {i!r} is not an id of {self.model_path} ({size} ids)")
        found[role] = i
    if "unk" not in found:
      unk = getattr(self._tok.model, "unk_token", None)
      if unk is not None and self._tok.token_to_id(unk) is not None:
        found["unk"], sources["unk"] = self._tok.token_to_id(unk), f"{self.model_path}: model.unk_token"
    return {role: i for role, i in found.items() if i is not None}, sources

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def encode_with_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    enc = self._tok.encode(text, add_special_tokens=False)  # added tokens are split out by `tokenizers` itself
    offsets = np.asarray(enc.offsets, np.int64).reshape(-1, 2)
    return np.asarray(enc.ids, np.int32), offsets[:, 0], offsets[:, 1]

  def special_strings(self) -> tuple[str, ...]:
    added = [t.content for t in self._tok.get_added_tokens_decoder().values() if t.special]
    return tuple(dict.fromkeys([*super().special_strings(), *added]))

  def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[np.ndarray]:
    """Token ids of each text. With num_threads > 1 the `tokenizers` library encodes the list in parallel on its
    own thread pool (sized by RAYON_NUM_THREADS, not by num_threads)."""
    if num_threads <= 1:
      return [self.encode(text) for text in texts]
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

  def _decode(self, ids: list[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=True)

  def piece(self, i: int) -> str:
    token = self._tok.id_to_token(int(i))
    if token is None:
      raise IndexError(f"id {i} is outside the vocabulary of {self.model_path} ({self.vocab_size} ids)")
    return token

  def _own_config(self) -> dict[str, Any]:
    """The tokenizer_config.json next to the file, without what would make transformers run remote code."""
    config = _read_json(pathlib.Path(self.model_path).parent / "tokenizer_config.json")
    config.pop("auto_map", None)
    return config

  def _refuse_shadowing(self, out_dir: pathlib.Path) -> None:
    for name in SENTENCEPIECE_FILENAMES:
      if (out_dir / name).exists():
        raise TokenizerError(f"{out_dir / name} exists and would be read instead of {HF_FILENAME}; write into an empty "
                         "directory")

  def save(self, out_dir: str | os.PathLike) -> list[str]:
    out_dir = pathlib.Path(out_dir)
    self._refuse_shadowing(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _copy(self.model_path, out_dir / HF_FILENAME)
    config = {**self._own_config(), **self._special_tokens()}  # explicit nulls: no later file can add a token
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return [HF_FILENAME, "tokenizer_config.json", *self._save_chat_template(out_dir)]

  def save_for_hf(self, out_dir: str | os.PathLike, family: str) -> list[str]:
    family = self._check_family(family)
    out_dir = pathlib.Path(out_dir)
    self._refuse_shadowing(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizers = _import_tokenizers()
    tok = tokenizers.Tokenizer.from_file(self.model_path)
    changed = tok.padding is not None or tok.truncation is not None
    tok.no_padding()
    tok.no_truncation()
    probe = tok.encode("a b", add_special_tokens=False).ids
    want = probe + [self.eos_id] if family == "t5" else [self.bos_id] * self.adds_bos + probe
    if tok.encode("a b").ids != want:
      tok.post_processor = self._post_processor(tokenizers, tok.post_processor, family)
      changed = True
    if changed:
      tok.save(str(out_dir / HF_FILENAME))
    else:
      _copy(self.model_path, out_dir / HF_FILENAME)
    tokens = self._special_tokens()
    config = {**self._own_config(), **tokens, "tokenizer_class": "PreTrainedTokenizerFast",
              "add_bos_token": family != "t5" and self.adds_bos, "add_eos_token": family == "t5",
              "clean_up_tokenization_spaces": False}
    return [HF_FILENAME, *_write_hf_configs(out_dir, config, tokens)]

  def _post_processor(self, tokenizers, current, family: str):
    """A post-processor adding the family's special token (kept after a byte-level one, which only maps offsets).
    For "decoder" without `adds_bos` it adds nothing (replacing one that adds a token the rows do not have)."""
    if family == "t5":
      token = self.piece(self.eos_id)
      single, pair = f"$A:0 {token}:0", f"$A:0 {token}:0 $B:1 {token}:1"
      special = [(token, self.eos_id)]
    elif not self.adds_bos:
      single, pair, special = "$A:0", "$A:0 $B:1", []
    else:
      token = self.piece(self.bos_id)
      single, pair = f"{token}:0 $A:0", f"{token}:0 $A:0 {token}:1 $B:1"
      special = [(token, self.bos_id)]
    template = tokenizers.processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    if isinstance(current, tokenizers.processors.ByteLevel):
      return tokenizers.processors.Sequence([current, template])
    return template


def load(path: str | os.PathLike) -> Tokenizer:
  """The tokenizer at `path`: a SentencePiece `.model` file, a `tokenizers` `.json` file, or a directory holding
  one of spm.model, spiece.model, tokenizer.model (SentencePiece, looked for first) or tokenizer.json."""
  path = pathlib.Path(path)
  looked_for = ", ".join((*SENTENCEPIECE_FILENAMES, HF_FILENAME))
  if path.is_dir():
    for name in SENTENCEPIECE_FILENAMES:
      if (path / name).is_file():
        return SentencePieceTokenizer(path / name)
    if (path / HF_FILENAME).is_file():
      return HFTokenizer(path / HF_FILENAME)
    raise TokenizerNotFound(f"no tokenizer in directory {path} (looked for {looked_for})")
  if path.is_file():
    if path.suffix == ".model":
      return SentencePieceTokenizer(path)
    if path.suffix == ".json":
      return HFTokenizer(path)
    raise TokenizerError(f"{path}: not a tokenizer file (expected a SentencePiece .model or a tokenizers .json)")
  raise TokenizerNotFound(f"tokenizer not found: {path} (expected a .model or .json file, or a directory holding "
                          f"one of {looked_for})")


def train(texts: Iterable[str], *, vocab_size: int, out_dir: str | os.PathLike,
          model_type: str = "unigram", character_coverage: float = 1.0,
          byte_fallback: bool = False, user_defined_symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
  """Trains a SentencePiece model on `texts` and writes `out_dir/spm.model` (and `.vocab`).

  `vocab_size` is an upper bound: a small corpus yields a smaller vocabulary rather than an error.
  Digits are split into single-digit pieces so numbers tokenize the same way everywhere.
  `user_defined_symbols` become pieces of their own that text never splits (a chat format's <|im_start|>, ...).
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
      input_sentence_size=2_000_000, shuffle_input_sentence=True, minloglevel=2,
      **({"user_defined_symbols": list(user_defined_symbols)} if user_defined_symbols else {}))
  return SentencePieceTokenizer(out_dir / MODEL_FILENAME)


def _import_tokenizers():
  try:
    import tokenizers  # pylint: disable=g-import-not-at-top
    import tokenizers.processors  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("reading a tokenizer.json needs the Hugging Face `tokenizers` package: pip install "
                      "tokenizers") from e
  return tokenizers


def _read_json(path: pathlib.Path) -> dict[str, Any]:
  """The object in a JSON file; {} when the file is absent."""
  if not path.is_file():
    return {}
  try:
    value = errors.loads_json(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise TokenizerError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(value, dict):
    raise TokenizerError(f"{path}: expected a JSON object, found {type(value).__name__}")
  return value


def _copy(src: str | os.PathLike, dst: pathlib.Path) -> None:
  if not (dst.exists() and os.path.samefile(src, dst)):
    shutil.copyfile(src, dst)


def _write_hf_configs(out_dir: pathlib.Path, config: dict[str, Any], tokens: dict[str, str | None]) -> list[str]:
  """Writes tokenizer_config.json and special_tokens_map.json (older transformers read the tokens from it)."""
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
  special = {key: token for key, token in tokens.items() if token is not None}
  (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
  return ["tokenizer_config.json", "special_tokens_map.json"]
