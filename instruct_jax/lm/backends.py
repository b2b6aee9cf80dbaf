"""Language-model backends: one small interface, three implementations, for synthetic data and the judge.

Every backend has `kind` and `model` (both recorded in provenance) and two batch methods:

    complete(prompts, params) -> list[Completion]        # plain text continuation
    chat(conversations, params) -> list[Completion]      # each conversation: [{"role", "content"}, ...]

Implementations: `OpenAIBackend` (any OpenAI-compatible HTTP server; `lm/openai.py`), `ModelBackend`
(wraps an instruct_jax decoding function; `ModelBackend.from_workdir` serves a trained workdir with the KV-cache
decoder; `lm/model.py`) and `ScriptedBackend` (tests). `synthetic.cache.CachedBackend` wraps any of them with the
on-disk request cache.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

Message = Mapping[str, str]
Conversation = Sequence[Message]
CHAT_ROLES = ("system", "user", "assistant")


class BackendError(RuntimeError):
  """A request failed for good (bad request, or retries exhausted)."""


@dataclasses.dataclass(frozen=True)
class GenParams:
  """Decoding settings for one batch of requests (all part of the request cache key)."""
  max_new_tokens: int = 512
  temperature: float = 0.0
  top_p: float = 1.0
  presence_penalty: float = 0.0
  stop: tuple[str, ...] = ()
  seed: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if not self.temperature >= 0:  # NaN too
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    object.__setattr__(self, "stop", tuple(self.stop))

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self) | {"stop": list(self.stop)}


@dataclasses.dataclass(frozen=True)
class Completion:
  """One generated text. finish_reason: "stop", "length", or None when the backend cannot tell."""
  text: str
  finish_reason: str | None = None

  @property
  def truncated(self) -> bool:
    """True when generation hit the token limit (Self-Instruct drops such responses whole)."""
    return self.finish_reason == "length"


class Backend(Protocol):
  kind: str
  model: str

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    ...

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    ...


def check_conversation(conversation: Conversation) -> list[dict[str, str]]:
  """Returns the conversation as plain dicts; raises ValueError on a bad role or content."""
  out = []
  for i, m in enumerate(conversation):
    role, content = m.get("role"), m.get("content")
    if role not in CHAT_ROLES:
      raise ValueError(f"message {i}: role must be one of {CHAT_ROLES}, got {role!r}")
    if not isinstance(content, str):
      raise ValueError(f"message {i}: content must be a string")
    out.append({"role": role, "content": content})
  if not out or out[-1]["role"] != "user":
    raise ValueError("a conversation must end with a user message")
  return out


def format_chat(conversation: Conversation) -> str:
  """A plain-text rendering of a conversation for models without a chat template.

  >>> format_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
  'System: Be brief.\\n\\nUser: Hi\\n\\nAssistant:'
  """
  parts = [f"{m['role'].capitalize()}: {m['content']}" for m in conversation if m["content"] or
           m["role"] != "system"]
  return "\n\n".join(parts + ["Assistant:"])


def apply_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
  """Cuts `text` at the earliest stop string; returns (text, whether a stop string was found)."""
  cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


ScriptFn = Callable[[Any, GenParams], "str | Completion"]


class ScriptedBackend:
  """A deterministic backend for tests: answers come from functions or from a fixed list.

  `complete_fn(prompt, params)` / `chat_fn(messages, params)` return a str or a Completion; without
  them, answers are popped in order from `responses`. Stop strings are applied as a server would.
  Every request is appended to `calls` as ("complete" | "chat", prompt or messages).
  """
  kind = "scripted"

  def __init__(self, complete_fn: ScriptFn | None = None, chat_fn: ScriptFn | None = None, *,
               responses: Sequence[str | Completion] = (), model: str = "scripted"):
    self.complete_fn = complete_fn
    self.chat_fn = chat_fn
    self.responses = list(responses)
    self.model = model
    self.calls: list[tuple[str, Any]] = []
    self._lock = threading.Lock()

  def _answer(self, fn: ScriptFn | None, kind: str, request: Any, params: GenParams) -> Completion:
    with self._lock:
      self.calls.append((kind, request))
      if fn is None:
        if not self.responses:
          raise BackendError(f"ScriptedBackend ran out of responses at call {len(self.calls)}")
        result = self.responses.pop(0)
    if fn is not None:
      result = fn(request, params)
    if isinstance(result, str):
      return Completion(apply_stop(result, params.stop)[0], "stop")
    text, stopped = apply_stop(result.text, params.stop)
    return Completion(text, "stop" if stopped else result.finish_reason)

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    return [self._answer(self.complete_fn, "complete", p, params) for p in prompts]

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    return [self._answer(self.chat_fn, "chat", check_conversation(c), params) for c in conversations]
