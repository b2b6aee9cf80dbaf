"""Test doubles for the synthetic package: a deterministic fake LM and a real local HTTP server.

`FakeLM` answers every prompt the synthetic methods send (recognised by the headers of the prompt
files), deterministically from a hash of the prompt, and now and then answers badly on purpose
(blacklisted words, near-duplicates, empty outputs, unparsable ratings...) so that every filter
shows up in the reports. `FakeOpenAIServer` serves FakeLM over the OpenAI completions and chat
completions wire format on 127.0.0.1, with injected 429 / 500 answers and slow answers.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time

from instruct_jax.synthetic import prompts as prompt_files
from instruct_jax.lm.backends import Completion, GenParams, ScriptedBackend, apply_stop

TOPICS = ["tea", "volcanoes", "chess openings", "tax returns", "rain gardens", "jazz chords",
          "bicycle repair", "the Roman calendar", "sourdough starters", "solar panels", "sleep",
          "bird migration", "public speaking", "compound interest", "glaciers", "origami",
          "vaccines", "city parks", "board game design", "coral reefs", "job interviews",
          "recycling plastics", "the moon landing", "knitting patterns", "spreadsheets",
          "desert plants", "ancient Egypt", "running shoes", "password safety", "beekeeping"]
VERBS = ["Describe", "Explain", "List facts about", "Summarize what is known about",
         "Give advice about", "Compare two views on", "Write a short story about",
         "Suggest questions about", "Classify the sentiment of a review of", "Is the claim true about"]
AUDIENCES = ["a child", "a beginner", "an expert", "a busy parent", "a student", "a tourist"]


def _h(*parts: str) -> int:
  return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12], 16)


class FakeLM:
  """Deterministic answers to the prompts of every synthetic method."""

  def __init__(self):
    self.si = prompt_files.load("self_instruct")
    self.evol = prompt_files.load("evol_instruct")
    self.bt = prompt_files.load("backtranslation")
    self.cur = prompt_files.load("curation")

  # --- completions ---
  def complete(self, prompt: str, params: GenParams) -> str | Completion:
    del params
    h = _h(prompt)
    if prompt.startswith(self.si["generation"]["header"]):
      return self._instructions(prompt, h)
    if prompt.startswith(self.si["classification"]["header"]):
      task = prompt.rsplit("Task: ", 1)[1]
      if h % 13 == 0:
        return " Perhaps"
      return " Yes" if task.startswith(("Classify", "Is the")) else " No"
    if prompt.startswith(self.si["instances_input_first"]["header"]):
      return self._input_first(prompt, h)
    if prompt.startswith(self.si["instances_output_first"]["header"]):
      return self._output_first(prompt, h)
    if prompt.startswith(self.bt["backward"]["header"]):
      reply = prompt.rsplit("Reply:\n", 1)[1].split("\n\nRequest:")[0]
      if h % 11 == 0:
        return ""
      words = reply.split()
      return f"Explain {' '.join(words[:6])} in plain terms.\n---\nReply:\nnext"
    raise AssertionError(f"FakeLM: unknown completion prompt {prompt[:80]!r}")

  def _instructions(self, prompt: str, h: int) -> str | Completion:
    shown = re.findall(r"^\d+\. (.*)$", prompt, re.M)
    first = len(shown) + 1
    items = []
    for i in range(5):
      k = _h(str(h), str(i))
      kind = k % 17
      topic, verb, who = TOPICS[k % 29 % len(TOPICS)], VERBS[k // 7 % len(VERBS)], AUDIENCES[k // 3 % 6]
      if kind == 0:
        items.append(f"Draw a map of {topic}.")
      elif kind == 1:
        items.append(f"Write a program that sorts facts about {topic}.")
      elif kind == 2:
        items.append("Say hi.")
      elif kind == 3:
        items.append(f"- {verb} {topic} for {who}.")
      elif kind == 4 and shown:
        items.append(shown[k % len(shown)])  # a copy: the ROUGE filter must catch it
      else:
        items.append(f"{verb} {topic} for {who}, in {2 + k % 4} sentences.")
    text = items[0] + "".join(f"\n{first + i}. {x}" for i, x in enumerate(items[1:], 1))
    if h % 19 == 0:
      return Completion(" " + text, "length")
    return " " + text

  def _input_first(self, prompt: str, h: int) -> str:
    task = prompt.rsplit("Task: ", 1)[1].strip()
    n = 1 + h % 7
    blocks = []
    for j in range(n):
      k = _h(str(h), str(j))
      inp, out = f"case {j} of {task[:20]}", f"answer {k % 9} for {task[:15]}"
      if k % 10 == 3 and blocks:  # an exact repeat of the previous example
        blocks.append(blocks[-1].replace(f"Example {j}", f"Example {j + 1}"))
        continue
      if k % 10 == 0:
        out = ""
      elif k % 10 == 1:
        out = inp
      elif k % 10 == 2:
        out = "as follows:"
      blocks.append(f"Example {j + 1}\nInput: {inp if k % 4 or j else 'none'}\nOutput: {out}\n")
    return "".join(blocks)

  def _output_first(self, prompt: str, h: int) -> str:
    task = prompt.rsplit("Task: ", 1)[1].strip()
    labels = ["Positive", "Negative", "Neutral"][:2 + h % 2]
    blocks = [f"Class label: {lab}\nInput: a {lab.lower()} example about {task[:25]}\n"
              for lab in labels]
    if h % 5 == 0:  # the same input under two labels: the whole task must be dropped
      blocks.append(f"Class label: {labels[0]}\nInput: a {labels[1].lower()} example about "
                    f"{task[:25]}\n")
    return "\n".join(blocks)

  # --- chat ---
  def chat(self, messages: list[dict[str, str]], params: GenParams) -> str | Completion:
    del params
    user = messages[-1]["content"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    h = _h(system, user)
    if "REWRITTEN TASK:" in user or "NEW TASK:" in user:
      original = user.split("ORIGINAL TASK:\n", 1)[1].split("\n\n", 1)[0].strip()
      if h % 9 == 0:
        return f"REWRITTEN TASK: {original}"
      if h % 9 == 1:
        return original
      extra = ["Use exactly three bullet points.", "Cite one concrete example.",
               "Justify each step of your reasoning.", "Include a small table of values."][h % 4]
      return f"{original} {extra}"
    if user.startswith(self.evol["judge"]["template"].split("{{")[0].strip()[:40]):
      first = user.split("First task:\n", 1)[1].split("\n\nSecond task:")[0].strip()
      second = user.split("Second task:\n", 1)[1].split("\n\nReply:")[0].strip()
      if h % 23 == 0:
        return "It depends."
      return "Equal" if first == second else "Not Equal"
    if user.startswith(self.bt["rating"]["template"][:40]) or user.startswith(
        self.cur["rating"]["template"][:40]):
      if h % 7 == 0:
        return "The reply is fine overall."
      return f"The reply addresses the request.\nScore: {3 + h % 3}"
    # A plain request: answer it (Evol-Instruct responses, Orca teacher responses).
    if h % 8 == 0:
      return "Sorry, I cannot help with that."
    if h % 8 == 1:
      return "It is what it is."
    style = f" ({system[:30]})" if system else ""
    return (f"Here is a careful answer{style}. First, consider {user[:40]!r}. "
            f"Then reason about it step by step and conclude with fact number {h % 97}.")


def scripted_backend(model: str = "fake-lm") -> ScriptedBackend:
  lm = FakeLM()
  return ScriptedBackend(lm.complete, lm.chat, model=model)


def every(k429: int = 0, k500: int = 0, kslow: int = 0):
  """A fault plan: the first attempt of the n-th distinct request gets 429 when n % k429 == 1,
  500 when n % k500 == 2, a slow answer when n % kslow == 3 (0 turns a fault off)."""
  def plan(n: int, attempt: int) -> str | None:
    if attempt:
      return None
    if k429 and n % k429 == 1 % k429:
      return "429"
    if k500 and n % k500 == 2 % k500:
      return "500"
    if kslow and n % kslow == 3 % kslow:
      return "slow"
    return None
  return plan


class FakeOpenAIServer:
  """An OpenAI-compatible server on 127.0.0.1 (by default answering with FakeLM).

  `faults(n, attempt)` picks a fault for the attempt-th sighting of the n-th distinct request body
  (1-based n): "429" (with Retry-After), "500", "400", or "slow" (sleep `slow_s`, then answer).
  `delay_s` slows every answer. With `api_key`, requests without that bearer token get 401.
  """

  def __init__(self, *, faults=None, slow_s: float = 1.0, delay_s: float = 0.0,
               api_key: str | None = None, retry_after: str = "0", complete_fn=None,
               chat_fn=None):
    self.lm = FakeLM()
    self.complete_fn = complete_fn or self.lm.complete
    self.chat_fn = chat_fn or self.lm.chat
    self.plan = faults or (lambda n, attempt: None)
    self.slow_s, self.delay_s, self.api_key = slow_s, delay_s, api_key
    self.retry_after = retry_after
    self.lock = threading.Lock()
    self.seen: dict[str, int] = {}
    self.attempts: dict[str, int] = {}
    self.bodies: list[dict] = []
    self.served = 0
    self.in_flight = self.max_in_flight = 0
    self.faults = {"429": 0, "500": 0, "400": 0, "slow": 0, "unauthorized": 0}
    self.auth_headers: set[str] = set()
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):  # keep test output quiet
        del args

      def do_POST(self):  # pylint: disable=invalid-name
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        server.handle(self, raw)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

  @property
  def url(self) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

  def __enter__(self) -> "FakeOpenAIServer":
    self.thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self.httpd.shutdown()
    self.httpd.server_close()

  def _send(self, handler, status: int, payload: dict, headers: dict | None = None) -> None:
    body = json.dumps(payload).encode()
    try:
      handler.send_response(status)
      handler.send_header("Content-Type", "application/json")
      handler.send_header("Content-Length", str(len(body)))
      for k, v in (headers or {}).items():
        handler.send_header(k, v)
      handler.end_headers()
      handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client gave up (timeout) before the answer

  def handle(self, handler, raw: bytes) -> None:
    body = json.loads(raw)
    auth = handler.headers.get("Authorization")
    with self.lock:
      self.bodies.append(body)
      if auth:
        self.auth_headers.add(auth)
      key = hashlib.sha256(raw).hexdigest()
      n = self.seen.setdefault(key, len(self.seen) + 1)
      attempt = self.attempts.get(key, 0)
      self.attempts[key] = attempt + 1
      fault = self.plan(n, attempt)
      if self.api_key and auth != f"Bearer {self.api_key}":
        fault = "unauthorized"
      if fault:
        self.faults[fault] += 1
    if fault == "unauthorized":
      return self._send(handler, 401, {"error": {"message": "bad key"}})
    if fault == "429":
      return self._send(handler, 429, {"error": {"message": "slow down"}},
                        {"Retry-After": self.retry_after})
    if fault == "400":
      return self._send(handler, 400, {"error": {"message": "bad request"}})
    if fault == "500":
      return self._send(handler, 500, {"error": {"message": "internal error"}})
    if fault == "slow":
      time.sleep(self.slow_s)
    if self.delay_s:  # requests overlapping here are in flight at the client at the same time
      with self.lock:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
      time.sleep(self.delay_s)
      with self.lock:
        self.in_flight -= 1
    params = GenParams(max_new_tokens=body["max_tokens"], temperature=body["temperature"],
                       top_p=body["top_p"], presence_penalty=body.get("presence_penalty", 0.0),
                       stop=tuple(body.get("stop", ())), seed=body.get("seed", 0))
    chat = handler.path.endswith("/chat/completions")
    if chat:
      answer = self.chat_fn(body["messages"], params)
    elif handler.path.endswith("/completions"):
      answer = self.complete_fn(body["prompt"], params)
    else:
      return self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
    if isinstance(answer, str):
      answer = Completion(answer, "stop")
    text, stopped = apply_stop(answer.text, params.stop)
    finish = "stop" if stopped else answer.finish_reason
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if chat else {"index": 0, "text": text, "finish_reason": finish, "logprobs": None})
    with self.lock:
      self.served += 1
    self._send(handler, 200, {"id": f"fake-{n}", "object": "chat.completion" if chat else
                              "text_completion", "model": body["model"], "choices": [choice]})
