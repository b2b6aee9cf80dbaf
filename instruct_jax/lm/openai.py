"""A client for OpenAI-compatible HTTP servers (vLLM, TGI, llama.cpp server, hosted APIs).

Standard library only (urllib). One HTTP request per prompt, `concurrency` of them in flight at
once (threads). Requests that fail with 408, 429 or 5xx, time out, or lose the connection are retried
up to `max_retries` times with exponential backoff (doubling from `backoff_s`, capped at
`max_backoff_s`, with jitter; a server's Retry-After is honoured up to the cap).

What a server cannot do to the client:
- take the API key elsewhere: redirects are not followed (a 3xx answer is an error naming its target), so the
  key goes only to the origin of `base_url`; the key a server echoes back is replaced by [REDACTED] in the
  completion text, so it reaches no file (the request cache, judge.jsonl, synthetic outputs) and no message;
- hang it: `timeout_s` is a deadline for the whole request (connect, send, headers and body), enforced by a
  watchdog that shuts the socket, so a server trickling one byte a second times out like a silent one;
- exhaust memory: a body over `max_response_bytes` is an error, read no further.

The key is read from an environment variable once, sent only in the Authorization header, and never logged.
Proxies: $https_proxy / $http_proxy (and $no_proxy) are honoured as urllib does.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import math
import os
import random
import re
import socket
import threading
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from instruct_jax.lm.backends import BackendError, Completion, Conversation, GenParams
from instruct_jax.lm.backends import check_conversation

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 32 * 2**20  # an OpenAI answer is kilobytes; this is far above any real one


class RequestTimeout(Exception):
  """The whole-request deadline passed (retried like a lost connection)."""


@dataclasses.dataclass(frozen=True)
class Answer:
  status: int
  headers: http.client.HTTPMessage
  body: bytes


def post(url: str, data: bytes, headers: dict[str, str], *, timeout_s: float,
         max_bytes: int = MAX_RESPONSE_BYTES) -> Answer:
  """One HTTP POST with a deadline for all of it, a cap on the body, and no redirects followed.

  Raises RequestTimeout past the deadline, BackendError for a body over `max_bytes`, and
  ConnectionError / OSError / http.client.HTTPException for a lost connection.
  """
  parts = urllib.parse.urlsplit(url)
  https = parts.scheme == "https"
  host, port = parts.hostname or "", parts.port or (443 if https else 80)
  target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
  proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get(parts.scheme)
  context = ssl.create_default_context() if https else None
  if proxy:
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    proxy_address = (proxy_parts.hostname or "", proxy_parts.port or 8080)
    if https:  # a CONNECT tunnel: the proxy sees neither the headers nor the body
      conn = http.client.HTTPSConnection(*proxy_address, timeout=timeout_s, context=context)
      conn.set_tunnel(host, port)
    else:
      conn = http.client.HTTPConnection(*proxy_address, timeout=timeout_s)
      target = url
  elif https:
    conn = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
  else:
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
  expired = threading.Event()

  def expire():
    expired.set()
    sock = conn.sock
    if sock is not None:
      try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv, which close() alone does not
      except OSError:
        pass  # already closed: the request finished as the deadline passed

  watchdog = threading.Timer(timeout_s, expire)
  watchdog.daemon = True
  watchdog.start()
  try:
    conn.request("POST", target, body=data, headers=headers)
    resp = conn.getresponse()
    length = resp.getheader("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
      raise BackendError(f"{url}: the response is {int(length)} bytes, over the {max_bytes}-byte cap")
    chunks, size = [], 0
    while chunk := resp.read(65536):
      size += len(chunk)
      if size > max_bytes:
        raise BackendError(f"{url}: the response is over the {max_bytes}-byte cap; stopped reading it")
      chunks.append(chunk)
    if expired.is_set():  # a shut socket can read as a clean end of the body
      raise RequestTimeout()
    return Answer(resp.status, resp.headers, b"".join(chunks))
  except (OSError, http.client.HTTPException):
    if expired.is_set():
      raise RequestTimeout() from None
    raise
  finally:
    watchdog.cancel()
    conn.close()


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
               max_response_bytes: int = MAX_RESPONSE_BYTES,
               sleep: Callable[[float], None] = time.sleep):
    if not base_url.startswith(("http://", "https://")):
      raise ValueError(f"--base_url must start with http:// or https://, got {base_url!r}")
    if timeout_s <= 0 or not math.isfinite(timeout_s):
      raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s}")
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
    self.max_response_bytes = max_response_bytes
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
        answer = post(url, data, headers, timeout_s=self.timeout_s, max_bytes=self.max_response_bytes)
      except RequestTimeout:
        reason = f"no complete answer within the {self.timeout_s}s deadline"
      except ssl.SSLError as e:  # a certificate problem does not go away on a retry
        raise BackendError(f"{url}: TLS error: {e}") from None
      except (OSError, http.client.HTTPException) as e:
        reason = f"connection error ({type(e).__name__}: {e})"
      else:
        if 200 <= answer.status < 300:
          return self._completion(url, answer.body, chat)
        if 300 <= answer.status < 400:
          raise BackendError(f"{url}: HTTP {answer.status} redirect to {answer.headers.get('Location')!r}, not "
                             "followed (the API key goes to the --base_url origin only): pass the final address "
                             "as --base_url")
        if answer.status not in RETRY_STATUS:
          detail = answer.body[:300].decode("utf-8", "replace")
          raise BackendError(redact(f"{url}: HTTP {answer.status}: {detail}", self._api_key))
        reason = f"HTTP {answer.status}"
        retry_after = _retry_after(answer.headers.get("Retry-After"))
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

  def _completion(self, url: str, raw: bytes, chat: bool) -> Completion:
    try:
      payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
      raise BackendError(redact(f"{url}: response is not JSON: {raw[:200]!r}", self._api_key)) from None
    try:
      completion = parse_response(payload, chat)
    except BackendError as e:
      raise BackendError(redact(str(e), self._api_key)) from None
    if self._api_key and self._api_key in completion.text:  # a server echoing the request's headers
      return Completion(completion.text.replace(self._api_key, "[REDACTED]"), completion.finish_reason)
    return completion


def _retry_after(value: str | None) -> float | None:
  try:
    return max(0.0, float(value)) if value is not None else None
  except ValueError:
    return None
