"""Language-model backends for synthetic data: one small interface, three implementations.

Every backend has `kind` and `model` (both recorded in provenance) and two batch methods:

    complete(prompts, params) -> list[Completion]        # plain text continuation
    chat(conversations, params) -> list[Completion]      # each conversation: [{"role", "content"}, ...]

Implementations: `OpenAIBackend` (any OpenAI-compatible HTTP server; in `openai_backend.py`),
`ModelBackend` (wraps an instruct_jax decoding function; `ModelBackend.from_workdir` serves a trained
workdir with the KV-cache decoder) and `ScriptedBackend` (tests).
`cache.CachedBackend` wraps any of them with the on-disk request cache.
"""
from __future__ import annotations

import dataclasses
import os
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
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 <= self.top_p <= 1:
      raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
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


GenerateFn = Callable[..., list]


class ModelBackend:
  """Wraps an instruct_jax decoding function as a backend.

  `generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed)` returns only the continuations:
  strings, or (text, finish reason) pairs (`predict.make_sampling_generate_fn(..., with_finish=True)`:
  "length" when a row hit max_new_tokens without end-of-text, else "stop"). Stop strings are applied
  here (finish_reason "stop" when one was cut); with plain strings the finish reason is otherwise
  unknown (None). presence_penalty is not applied. Chat is rendered to text by `chat_format` (default
  `format_chat`). Requests go in batches of `batch_size`.
  """
  kind = "model"

  def __init__(self, generate_fn: GenerateFn, *, model: str = "instruct_jax",
               chat_format: Callable[[Conversation], str] = format_chat, batch_size: int = 32):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.generate_fn = generate_fn
    self.model = model
    self.chat_format = chat_format
    self.batch_size = batch_size

  @classmethod
  def from_workdir(cls, path: str | None, *, step: int | None = None, batch_size: int = 16,
                   init_from: str | None = None) -> "ModelBackend":
    """A trained workdir (its newest checkpoint, or `step`) served by the KV-cache decoder in batches; with
    `init_from`, that checkpoint before fine-tuning (a baseline, step 0) with the workdir's settings or the defaults.

    The model name is "PATH@STEP", so the request cache tells checkpoints apart. Completion prompts go
    to the model as they are; a chat [system,] user is rendered as the run rendered its instruction
    files (`predict.instruction_prompts`: system, blank line, instruction), longer conversations with
    `format_chat` first. Prompts longer than the run's `data.inputs_length` are cut as in training.
    """
    from instruct_jax import predict  # pylint: disable=import-outside-toplevel  (jax: only when used)
    from instruct_jax import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
    loaded = workdir_lib.load_model(path, init_from, step)
    generate_fn = predict.make_sampling_generate_fn(
        loaded.model, loaded.params, loaded.tokenizer, batch_size=batch_size,
        max_prompt_tokens=loaded.config.data.inputs_length, mesh=loaded.mesh, rules=loaded.rules,
        with_finish=True)

    def chat_format(conversation: Conversation) -> str:
      has_system = conversation[0]["role"] == "system"
      turns = conversation[1:] if has_system else conversation
      instruction = turns[-1]["content"] if len(turns) == 1 else format_chat(turns)
      system = conversation[0]["content"] if has_system else ""
      return predict.instruction_prompts([{"instruction": instruction, "system": system}],
                                         loaded.config)[0]

    return cls(generate_fn, model=f"{os.path.abspath(init_from or path)}@{loaded.step}", chat_format=chat_format,
               batch_size=batch_size)

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    out: list[Completion] = []
    for start in range(0, len(prompts), self.batch_size):
      batch = list(prompts[start:start + self.batch_size])
      results = self.generate_fn(batch, max_new_tokens=params.max_new_tokens,
                                 temperature=params.temperature, top_p=params.top_p, seed=params.seed)
      if len(results) != len(batch):
        raise BackendError(f"generate_fn returned {len(results)} texts for {len(batch)} prompts")
      for result in results:
        text, finish = result if isinstance(result, tuple) else (result, None)
        if not isinstance(text, str):
          raise BackendError(f"generate_fn must return strings, got {type(text).__name__}")
        cut, stopped = apply_stop(text, params.stop)
        out.append(Completion(cut, "stop" if stopped else finish))
    return out

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    return self.complete([self.chat_format(check_conversation(c)) for c in conversations], params)


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
