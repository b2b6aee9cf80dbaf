"""The request cache: a backend wrapper that answers repeated requests from disk.

The key is the SHA-256 of the exact request: backend kind, model name, endpoint (completion or
chat), the prompt or messages, and every decoding parameter (including the seed). The server
address and the API key are not part of it, so a cache survives a server restart on another port
and never contains a secret. Entries live in one append-only JSONL file (`<out>/cache/requests.jsonl`),
written as soon as each batch of requests returns, so a killed run loses at most the batch in flight
and a re-run replays everything it has seen at no cost.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from typing import Any

from instruct_jax.lm.backends import Backend, Completion, Conversation, GenParams
from instruct_jax.lm.backends import check_conversation
from instruct_jax.synthetic.records import AppendOnlyJsonl


def request_key(kind: str, model: str, endpoint: str, content: Any, params: GenParams) -> str:
  """SHA-256 hex digest of a canonical JSON description of one request."""
  desc = {"backend": kind, "model": model, "endpoint": endpoint, "content": content,
          "params": params.to_json()}
  blob = json.dumps(desc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
  """Completions stored by request key in an AppendOnlyJsonl file."""

  def __init__(self, path: str):
    self._file = AppendOnlyJsonl(path, key_field="key")
    self.hits = 0
    self.misses = 0
    self._lock = threading.Lock()

  @property
  def path(self) -> str:
    return self._file.path

  def __len__(self) -> int:
    return len(self._file.entries)

  def get(self, key: str) -> Completion | None:
    entry = self._file.get(key)
    with self._lock:
      if entry is None:
        self.misses += 1
        return None
      self.hits += 1
    return Completion(entry["text"], entry.get("finish_reason"))

  def put(self, key: str, endpoint: str, completion: Completion) -> None:
    self._file.append({"key": key, "endpoint": endpoint, "text": completion.text,
                       "finish_reason": completion.finish_reason})

  def close(self) -> None:
    self._file.close()


class CachedBackend:
  """Wraps a backend: cached requests are answered from disk, the rest go to the backend in one
  batch and are stored the moment the batch returns."""

  def __init__(self, backend: Backend, cache: RequestCache):
    self.backend = backend
    self.cache = cache
    self.kind = backend.kind
    self.model = backend.model

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    return self._serve("completion", list(prompts), list(prompts), params, self.backend.complete)

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    plain = [check_conversation(c) for c in conversations]
    return self._serve("chat", plain, plain, params, self.backend.chat)

  def _serve(self, endpoint, contents, requests, params, call) -> list[Completion]:
    keys = [request_key(self.kind, self.model, endpoint, c, params) for c in contents]
    out: list[Completion | None] = [self.cache.get(k) for k in keys]
    todo: dict[str, list[int]] = {}
    for i, (k, got) in enumerate(zip(keys, out)):
      if got is None:
        todo.setdefault(k, []).append(i)  # identical requests in one batch are sent once
    if todo:
      first = [idxs[0] for idxs in todo.values()]
      answers = call([requests[i] for i in first], params)
      for (key, idxs), answer in zip(todo.items(), answers):
        self.cache.put(key, endpoint, answer)
        for i in idxs:
          out[i] = answer
    return out  # type: ignore[return-value]
