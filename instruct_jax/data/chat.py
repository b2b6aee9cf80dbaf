"""Conversations: chat records, chat formats (Jinja templates) and their rendering with the scored spans.

Records, one per JSONL line (or a JSON list), detected per record:

    OpenAI    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
    ShareGPT  {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}

A conversation may open with a system message, then opens with a user message and holds at least one
assistant turn; every content is a non-empty string. A record that breaks this is a `ChatError` naming
file:line in strict mode, and is skipped and counted (`stats.bad_records`) in lenient mode.

A chat format is a Jinja template rendered as transformers' `apply_chat_template` renders one (a sandboxed
environment with trim_blocks, lstrip_blocks and loop controls; `messages`, `add_generation_prompt`,
`bos_token`, `eos_token`, `raise_exception`). `resolve_format(spec, tokenizer)` gives the tokenizer's own
template ("" or "tokenizer"), a named format of templates/chat_formats.yaml (alpaca, vicuna, chatml, llama3, zephyr)
or a .jinja file (its special strings: the <|...|> strings of its source).

Rendering (`render`) finds each assistant turn k as the text between the rendering of messages[:k] with the
generation prompt (a prefix of the whole rendering, which a template must keep) and the end of the turn's
end-of-turn marker: the first special string after its content (<|im_end|>, <|eot_id|>, end-of-text), or the
turn's text up to its trailing whitespace when it has none. Those characters are scored; everything else
(system, user, role headers, generation prompts, the newline after <|im_end|>) is not. The whole rendering is
tokenized at once (`encode_with_offsets`), so the ids equal those of tokenizing the whole string (as
`apply_chat_template` does), and a turn's scored tokens run from the end of its prompt's own tokenization (what
inference reads, a prefix of the ids) to the last token overlapping its characters (`scored_tokens`).

    tokens  <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n Hello <|im_end|> \n
    weight       0        0   0  0     0      0      0          0      0    1       1      0
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from instruct_jax.data import sources

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
FORMATS_FILE = pathlib.Path(__file__).with_name("templates") / "chat_formats.yaml"
FLAG = "config.data.chat_format"
JINJA_SPECIAL = re.compile(r"<\|[^|<>\s]+\|>")  # the special strings of a .jinja format: <|im_end|>, <|eot_id|>, ...


class ChatError(sources.DataError):
  """A conversation or chat format that cannot be used; the message names the file, line, field or flag."""


# --- Records -------------------------------------------------------------------------------------------


def parse_conversation(record: Mapping[str, Any], where: str) -> list[dict[str, str]]:
  """[{role, content}] of an OpenAI-messages or ShareGPT record; ChatError naming `where` if it is bad."""
  if "messages" in record:
    turns, role_key, text_key, roles = record["messages"], "role", "content", {r: r for r in ROLES}
  elif "conversations" in record:
    turns, role_key, text_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
  else:
    raise ChatError(f"{where}: a chat record holds 'messages' (OpenAI) or 'conversations' (ShareGPT); it has "
                    f"{sorted(record)}")
  field = "messages" if role_key == "role" else "conversations"
  if not isinstance(turns, list) or not turns:
    raise ChatError(f"{where}: field {field!r} must be a non-empty list")
  out = []
  for i, turn in enumerate(turns):
    at = f"{where}: {field}[{i}]"
    if not isinstance(turn, dict):
      raise ChatError(f"{at} must be an object, got {type(turn).__name__}")
    role, content = turn.get(role_key), turn.get(text_key)
    if role not in roles:
      raise ChatError(f"{at}: unknown role {role!r} in field {role_key!r} (known: {', '.join(roles)})")
    if not isinstance(content, str) or not content.strip():
      raise ChatError(f"{at}: field {text_key!r} must be a non-empty string, got {content!r}")
    role = roles[role]
    if role == "system" and i:
      raise ChatError(f"{at}: a system message may only open the conversation")
    out.append({"role": role, "content": content})
  body = [m["role"] for m in out if m["role"] != "system"]
  if "assistant" not in body:
    raise ChatError(f"{where}: the conversation has no assistant turn, so nothing to train on")
  if body[0] != "user":
    raise ChatError(f"{where}: the conversation must open with a user message (after any system message)")
  return out


def check_prompt_messages(messages: Any, where: str) -> None:
  """ChatError unless `messages` is a list of {role, content} (OpenAI roles, string contents) ending where a model is
  to answer (not with an assistant message): a conversation to generate for."""
  if not isinstance(messages, list) or not messages:
    raise ChatError(f"{where}: expected a non-empty list of messages")
  for j, m in enumerate(messages):
    if not isinstance(m, Mapping) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
      raise ChatError(f"{where}: message {j} must be {{\"role\": system|user|assistant, \"content\": text}}")
  if messages[-1]["role"] == "assistant":
    raise ChatError(f"{where}: a conversation to answer ends with a user (or system) message, not an assistant's")


def assistant_turns(messages: Sequence[Mapping[str, str]]) -> list[int]:
  return [i for i, m in enumerate(messages) if m["role"] == "assistant"]


class ChatSource(sources._FileSource):  # pylint: disable=protected-access
  """Conversations from JSONL (or JSON list) files, one file per split: {"messages", "turn"} records.

  `turn` is the position of the assistant message the record is about: the last one, or with per_turn=True one
  record per assistant turn (the encoder-decoder view: each turn is one example).
  """
  kind = "chat"

  def __init__(self, files: Mapping[str, str | os.PathLike], *, strict: bool = True, per_turn: bool = False):
    super().__init__(files)
    self.strict, self.per_turn = strict, per_turn
    self.stats = sources.ReadStats()
    self._conversations: dict[str, list[list[dict[str, str]]]] = {}  # by file, shared with the turns view

  def turns_view(self) -> "ChatSource":
    """The same files, one record per assistant turn (sharing this source's reads and counts)."""
    view = ChatSource(self.files, strict=self.strict, per_turn=True)
    view.stats, view._conversations = self.stats, self._conversations  # pylint: disable=protected-access
    return view

  def _read(self, path: str) -> list[dict[str, Any]]:
    if path not in self._conversations:
      self._conversations[path] = self._parse(path)
    out = []
    for messages in self._conversations[path]:
      turns = assistant_turns(messages)
      out.extend({"messages": messages, "turn": k} for k in (turns if self.per_turn else turns[-1:]))
    return out

  def _parse(self, path: str) -> list[list[dict[str, str]]]:
    return sources.parse_records(path, parse_conversation, strict=self.strict, stats=self.stats, error=ChatError,
                                 what="conversation")


def instruction_messages(r: Mapping[str, str]) -> list[dict[str, str]]:
  """An {instruction, input, output, system} record as [system?, user, assistant]; the user message keeps the
  instruction and input as fields of their own too (Alpaca's format gives each its section)."""
  content = r["instruction"].strip() + (f"\n\n{r['input'].strip()}" if r.get("input", "").strip() else "")
  user = {"role": "user", "content": content, "instruction": r["instruction"].strip(),
          "input": r.get("input", "").strip()}
  system = [{"role": "system", "content": r["system"].strip()}] if r.get("system", "").strip() else []
  return [*system, user, {"role": "assistant", "content": r["output"]}]


# --- Formats -------------------------------------------------------------------------------------------


def _raise(message: str):
  raise ChatError(f"chat template: {message}")


@functools.lru_cache(maxsize=32)
def _compile(template: str):
  import jinja2  # pylint: disable=g-import-not-at-top
  import jinja2.ext  # pylint: disable=g-import-not-at-top
  import jinja2.sandbox  # pylint: disable=g-import-not-at-top
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent,
                                                                               ensure_ascii=ensure_ascii)
  env.globals["raise_exception"] = _raise
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template)
  except jinja2.TemplateSyntaxError as e:
    raise ChatError(f"chat template line {e.lineno}: {e.message}") from None


@dataclasses.dataclass(frozen=True)
class ChatFormat:
  """A Jinja chat template with the tokenizer's strings it uses.

  Attributes:
    name: the format's name ("chatml", ..., "tokenizer" or the .jinja path).
    template: Jinja source.
    specials: strings that must be single tokens (end-of-text and begin-of-text included).
    bos_token, eos_token: the tokenizer's begin- and end-of-text strings, as templates receive them.
    writes_bos: the tokenizer's own template, which writes the begin-of-text itself where its model has one: a
      decoder row is its rendering as it is, the ids transformers' `apply_chat_template` gives. Rows of other
      formats begin with begin-of-text where the tokenizer adds one (`Tokenizer.adds_bos`), as plain rows do.
  """
  name: str
  template: str
  specials: tuple[str, ...] = ()
  bos_token: str = ""
  eos_token: str = ""
  writes_bos: bool = False

  def render(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    return _compile(self.template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                          bos_token=self.bos_token, eos_token=self.eos_token)

  def user_symbols(self) -> tuple[str, ...]:
    """The specials a SentencePiece model trained for this format must hold as single pieces."""
    return tuple(s for s in self.specials if s and s not in (self.bos_token, self.eos_token))


def named_formats() -> dict[str, dict[str, Any]]:
  return yaml.safe_load(FORMATS_FILE.read_text(encoding="utf-8"))


def tokenizer_template(tokenizer) -> str | None:
  """The tokenizer's own Jinja chat template (`Tokenizer.chat_template`), None when it has none."""
  return tokenizer.chat_template() if hasattr(tokenizer, "chat_template") else None


def _strings(tokenizer) -> tuple[str, str]:
  if tokenizer is None:  # the SentencePiece model a run trains (tokenizer.train's pieces)
    return "<s>", "</s>"
  return (tokenizer.piece(tokenizer.bos_id) if tokenizer.bos_id >= 0 else ""), tokenizer.piece(tokenizer.eos_id)


def resolve_format(spec: str, tokenizer=None, *, has_chat_data: bool = True, flag: str = FLAG) -> ChatFormat | None:
  """The chat format `spec` names for `tokenizer` (None: the one a run trains, which has no template).

  "" is the tokenizer's own template for chat data (None when there is no chat data: instruction files keep
  their plain templates), "tokenizer" the tokenizer's template, a name one of templates/chat_formats.yaml, and a
  path ending in .jinja that file.
  """
  bos, eos = _strings(tokenizer)
  named = named_formats()
  if spec in ("", "tokenizer"):
    if spec == "" and not has_chat_data:
      return None
    template = tokenizer_template(tokenizer) if tokenizer is not None else None
    if template is None:
      where = f"tokenizer {tokenizer.model_path}" if tokenizer is not None else "the tokenizer trained for this run"
      raise ChatError(f"{flag}={spec!r}: {where} has no chat template (chat_template in tokenizer_config.json); "
                      f"set {flag} to one of {', '.join(named)} or a .jinja file")
    specials = tuple(s for s in getattr(tokenizer, "special_strings", lambda: ())() if s)
    return ChatFormat("tokenizer", template, specials + (bos, eos), bos, eos, writes_bos=True)
  if spec in named:
    entry = named[spec]
    return ChatFormat(spec, entry["template"], tuple(entry.get("specials") or ()) + (bos, eos), bos, eos)
  if spec.endswith(".jinja"):
    if not os.path.isfile(spec):
      raise ChatError(f"{flag}={spec}: no such file")
    template = pathlib.Path(spec).read_text(encoding="utf-8")
    return ChatFormat(spec, template, (*dict.fromkeys(JINJA_SPECIAL.findall(template)), bos, eos), bos, eos)
  raise ChatError(f"{flag}={spec!r}: unknown chat format; use one of {', '.join(named)}, 'tokenizer' or a path "
                  "to a .jinja file")


# --- Rendering -----------------------------------------------------------------------------------------


def _turn_end(text: str, start: int, content: str, specials: Sequence[str]) -> int:
  """End of the scored part of the assistant turn whose text is text[start:]: its content, then the first
  special string after it (the end-of-turn marker), else the text up to its trailing whitespace."""
  stripped = content.strip()
  at = text.rfind(stripped, start) if stripped else -1
  content_end = at + len(stripped) if at >= 0 else start
  rest = text[content_end:]
  hits = [(rest.find(s), s) for s in specials if s and s in rest]
  if hits:
    pos, s = min(hits, key=lambda h: (h[0], -len(h[1])))
    return content_end + pos + len(s)
  return content_end + len(rest.rstrip())


def render(fmt: ChatFormat, messages: Sequence[Mapping[str, str]], turn: int | None = None) -> dict[str, Any]:
  """A conversation up to its assistant message `turn` (default: the last) rendered with `fmt`.

  Returns {"inputs": the rendering before that turn with the generation prompt, "targets": the turn's content,
  "text": the whole rendering, "spans": [(start, end)] characters scored, one per assistant turn, "writes_bos":
  the format's}.
  """
  turns = assistant_turns(messages)
  turn = turns[-1] if turn is None else turn
  messages = list(messages[:turn + 1])
  text = fmt.render(messages)
  spans, prompt = [], ""
  for k in (k for k in turns if k <= turn):
    prompt = fmt.render(messages[:k], add_generation_prompt=True)
    upto = fmt.render(messages[:k + 1])
    if not (text.startswith(upto) and upto.startswith(prompt)):
      raise ChatError(f"chat format {fmt.name}: the rendering of the conversation's first {k} messages with the "
                      f"generation prompt is not a prefix of its whole rendering, so assistant turn {k} cannot be "
                      f"found; use a named format or a .jinja file ({FLAG})")
    spans.append((len(prompt), _turn_end(upto, len(prompt), messages[k]["content"], fmt.specials)))
  return {"inputs": prompt, "targets": messages[turn]["content"], "text": text, "spans": spans,
          "writes_bos": fmt.writes_bos}


def prompt(fmt: ChatFormat, messages: Sequence[Mapping[str, str]]) -> str:
  """What a model reads to answer a conversation: its rendering with the generation prompt."""
  return fmt.render(messages, add_generation_prompt=True)


def encode_with_offsets(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Ids of `text` with special strings as their ids, and each token's character span (start, end)."""
  if hasattr(tokenizer, "encode_with_offsets"):
    return tokenizer.encode_with_offsets(text)
  ids = tokenizer.encode(text)
  return ids, np.zeros(len(ids), np.int64), np.full(len(ids), len(text), np.int64)


def encode(tokenizer, text: str) -> np.ndarray:
  """Ids of rendered chat text (special strings such as end-of-text as their ids)."""
  return encode_with_offsets(tokenizer, text)[0]


def scored_tokens(tokenizer, rendered: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, list[int]]:
  """(ids, weights, turn ends): the rendering's ids, 1 on each assistant turn's tokens, and per assistant turn the
  index one past its last scored token.

  A turn's tokens run from the end of its prompt's own tokenization (what inference reads; a prefix of the ids
  whenever no token straddles the boundary, which holds for the named formats) to the last token overlapping its
  span. So a token inference must generate is scored even where it covers a prompt character: SentencePiece drops a
  prompt's trailing newline, and the "▁" piece that stands for it in the whole text is the turn's first token.
  Where a token does straddle the boundary, the turn starts at the first token overlapping its span.
  """
  text = rendered["text"]
  ids, starts, ends = encode_with_offsets(tokenizer, text)
  ends = np.maximum(ends, starts + 1)  # a zero-width token counts at its position
  weights = np.zeros(len(ids), np.float32)
  turn_ends = []
  for a, b in rendered["spans"]:
    overlapping = np.nonzero((starts < b) & (ends > a))[0]
    if not overlapping.size:
      continue
    prompt = encode_with_offsets(tokenizer, text[:a])[0]
    first = len(prompt) if np.array_equal(ids[:len(prompt)], prompt) else int(overlapping[0])
    weights[first:overlapping[-1] + 1] = 1.0
    turn_ends.append(int(overlapping[-1]) + 1)
  return ids, weights, turn_ends


def end_of_turn_id(fmt: ChatFormat, tokenizer) -> int:
  """The id a decoder emits to end its turn in `fmt` (its last scored token); ChatError if the marker is not one
  token of `tokenizer`."""
  probe = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]
  rendered = render(fmt, probe)
  a, b = rendered["spans"][-1]
  content_end = rendered["text"].rfind("Hello.", a) + len("Hello.")
  marker = rendered["text"][content_end:b]
  ids, starts, ends = encode_with_offsets(tokenizer, rendered["text"])
  covering = np.nonzero((starts < b) & (np.maximum(ends, starts + 1) > content_end))[0]
  if len(covering) != 1 or starts[covering[0]] < content_end:
    raise ChatError(f"chat format {fmt.name}: its end-of-turn marker {marker!r} is not one token of tokenizer "
                    f"{tokenizer.model_path}, so a decoder could not stop at it; use a format whose turns end with "
                    f"end-of-text (alpaca, vicuna) or a tokenizer that holds it ({FLAG}); a run from a checkpoint "
                    "(config.init_from) adds it as a new token with config.data.add_chat_tokens=True")
  return int(ids[covering[0]])


@dataclasses.dataclass(frozen=True)
class ChatFields:
  """A task's preprocessor: a chat record ({messages, turn}), or with instructions=True an {instruction, input,
  output, system} record, as template fields: "chat" (the `render` result), "prompt" and "answer"."""
  fmt: ChatFormat | None
  instructions: bool = False

  def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
    if self.fmt is None:
      raise ChatError(f"chat data needs a chat format: set {FLAG} (alpaca, vicuna, chatml, llama3, zephyr, tokenizer "
                      "or a .jinja file), or use a tokenizer with a chat template")
    if self.instructions:
      rendered = render(self.fmt, instruction_messages(record))
    else:
      rendered = render(self.fmt, record["messages"], record["turn"])
    return {"chat": rendered, "prompt": rendered["inputs"], "answer": rendered["targets"]}


class SpecialAware:
  """A tokenizer whose `encode` reads special strings in the text as their ids (`encode` above), for prompts a chat
  format rendered (e.g. "</s>" ending an earlier turn); everything else is the wrapped tokenizer's. The tokenizer's
  own template (`fmt.writes_bos`), and any format of a tokenizer that adds no begin-of-text, is read as it is;
  otherwise a begin-of-text the template wrote is dropped here and added once by `Model.prompt_ids`, as the
  pipeline's chat rows do."""

  def __init__(self, tokenizer, fmt: ChatFormat | None = None):
    self.tokenizer = tokenizer
    self.writes_bos = fmt is not None and fmt.writes_bos

  def __getattr__(self, name: str):
    if name.startswith("__") or name in ("tokenizer", "writes_bos"):
      raise AttributeError(name)
    return getattr(self.tokenizer, name)

  @property
  def adds_bos(self) -> bool:
    return self.tokenizer.adds_bos and not self.writes_bos

  def encode(self, text: str) -> np.ndarray:
    ids = encode(self.tokenizer, text)
    if self.writes_bos or not self.tokenizer.adds_bos:  # the rendering is the row (as the pipeline makes it)
      return ids
    bos = self.tokenizer.bos_id
    return ids[1:] if ids.size and ids[0] == bos else ids  # a template's own begin-of-text: prompt_ids adds it


def export_template(spec: str, *, begin_of_text: bool) -> str | None:
  """The Jinja template to write into an exported tokenizer_config.json for a run's `config.data.chat_format`: a
  named format's or a .jinja file's (begin_of_text: led by {{ bos_token }}, as a decoder's rows start with it where
  its tokenizer adds one; the export's tokenizer then gives the run's ids through apply_chat_template). None for ""
  and "tokenizer" (the tokenizer's own template is exported as it is)."""
  named = named_formats()
  if spec in named:
    template = named[spec]["template"]
  elif spec.endswith(".jinja") and os.path.isfile(spec):
    template = pathlib.Path(spec).read_text(encoding="utf-8")
  else:
    return None
  return "{{- bos_token -}}" + template if begin_of_text else template
