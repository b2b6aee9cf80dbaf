"""A client for OpenAI-compatible HTTP servers (vLLM, TGI, llama.cpp server, hosted APIs).

Standard library only (urllib). One HTTP request per prompt, `concurrency` of them in flight at
once (threads). Requests that fail with 408, 429 or 5xx, time out, or lose the connection are retried
up to `max_retries` times with exponential backoff (doubling from `backoff_s`, capped at
`max_backoff_s`, with jitter; a server's Retry-After is honoured up to the cap). The API key is read
from an environment variable once, sent only in the Authorization header, and never logged.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from instruct_jax.lm.backends import BackendError, Completion, Conversation, GenParams
from instruct_jax.lm.backends import check_conversation

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def request_body(model: str, params: GenParams, *, prompt: str | None = None,
                 messages: list[dict[str, str]] | None = None) -> dict[str, Any]:
  """The JSON body of one completions (prompt) or chat completions (messages) request."""
  body: dict[str, Any] = {"model": model, "max_tokens": params.max_new_tokens,
                          "temperature": params.temperature, "top_p": params.top_p,
                          "seed": params.seed}
  if params.presence_penalty:
    body["presence_penalty"] = params.presence_penalty
  if params.stop:
    body["stop"] = list(params.stop)
  if prompt is not None:
    body["prompt"] = prompt
  else:
    body["messages"] = messages
  return body


def parse_response(payload: Any, chat: bool) -> Completion:
  """Reads the first choice of a completions / chat completions response body."""
  try:
    choice = payload["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    finish = choice.get("finish_reason")
  except (KeyError, IndexError, TypeError):
    raise BackendError(f"unexpected response shape: {json.dumps(payload)[:300]}") from None
  if text is None:
    text = ""
  if not isinstance(text, str):
    raise BackendError(f"response text is not a string: {json.dumps(payload)[:300]}")
  return Completion(text, finish if isinstance(finish, str) else None)


_SECRET_PATTERNS = (
    re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(bearer\s+)?[^\s\"',}]+"),
    re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk-)[A-Za-z0-9_-]{8,}"),
)


def redact(text: str, secret: str | None) -> str:
  """`text` without the API key and anything shaped like a credential (Authorization values, bearer tokens,
  sk-... keys), for server text that is printed or raised."""
  if secret:
    text = text.replace(secret, "[REDACTED]")
  for pattern in _SECRET_PATTERNS:
    text = pattern.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)
  return text


class OpenAIBackend:
  """Completions and chat completions against `base_url` (e.g. http://127.0.0.1:8000/v1).

  Server text that reaches an error message or a log line goes through `redact` first: a server that
  echoes request headers must not put the API key on the terminal or into a log.
  """
  kind = "openai"

  def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY",
               concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 6,
               backoff_s: float = 1.0, max_backoff_s: float = 60.0,
               sleep: Callable[[float], None] = time.sleep):
    if not base_url.startswith(("http://", "https://")):
      raise ValueError(f"--base_url must start with http:// or https://, got {base_url!r}")
    if concurrency < 1:
      raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if not model:
      raise ValueError("a model name is required for the openai backend (--model)")
    self.base_url = base_url.rstrip("/")
    self.model = model
    self.concurrency = concurrency
    self.timeout_s = timeout_s
    self.max_retries = max_retries
    self.backoff_s = backoff_s
    self.max_backoff_s = max_backoff_s
    self._sleep = sleep
    self._api_key = os.environ.get(api_key_env) or None
    if self._api_key is None:
      logging.info("no API key in $%s; sending requests without Authorization", api_key_env)
    self.retries_done = 0  # for reports and tests
    self._lock = threading.Lock()

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    bodies = [request_body(self.model, params, prompt=p) for p in prompts]
    return self._run(bodies, "/completions", chat=False)

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    bodies = [request_body(self.model, params, messages=check_conversation(c))
              for c in conversations]
    return self._run(bodies, "/chat/completions", chat=True)

  def _run(self, bodies: list[dict[str, Any]], path: str, chat: bool) -> list[Completion]:
    if len(bodies) <= 1 or self.concurrency == 1:
      return [self._post(path, b, chat) for b in bodies]
    workers = min(self.concurrency, len(bodies))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      return list(pool.map(lambda b: self._post(path, b, chat), bodies))

  def _post(self, path: str, body: dict[str, Any], chat: bool) -> Completion:
    url = self.base_url + path
    data = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if self._api_key:
      headers["Authorization"] = "Bearer " + self._api_key
    rng = random.Random()
    attempt = 0
    while True:
      retry_after = None
      try:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
          raw = resp.read()
        try:
          payload = json.loads(raw)
        except json.JSONDecodeError:
          raise BackendError(redact(f"{url}: response is not JSON: {raw[:200]!r}", self._api_key)) from None
        try:
          return parse_response(payload, chat)
        except BackendError as e:
          raise BackendError(redact(str(e), self._api_key)) from None
      except urllib.error.HTTPError as e:
        if e.code not in RETRY_STATUS:
          detail = e.read()[:300].decode("utf-8", "replace")
          raise BackendError(redact(f"{url}: HTTP {e.code}: {detail}", self._api_key)) from None
        reason = f"HTTP {e.code}"
        retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
      except (TimeoutError, socket.timeout) as e:
        reason = f"timeout after {self.timeout_s}s ({type(e).__name__})"
      except urllib.error.URLError as e:
        if not isinstance(e.reason, (TimeoutError, socket.timeout, ConnectionError, OSError)):
          raise BackendError(redact(f"{url}: {e.reason}", self._api_key)) from None
        reason = f"connection error ({e.reason})"
      except (ConnectionError, http.client.HTTPException) as e:
        reason = f"connection error ({type(e).__name__})"
      if attempt >= self.max_retries:
        raise BackendError(f"{url}: giving up after {attempt + 1} attempts; last: {reason}")
      delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * rng.uniform(0.5, 1.0)
      if retry_after is not None:
        delay = min(self.max_backoff_s, max(delay, retry_after))
      logging.warning("%s: %s; retry %d/%d in %.2fs", url, reason, attempt + 1, self.max_retries,
                      delay)
      with self._lock:
        self.retries_done += 1
      attempt += 1
      self._sleep(delay)


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None
