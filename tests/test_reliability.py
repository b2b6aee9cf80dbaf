"""The second fault probe's cases (issue 28), each reproduced: credentials and servers that misbehave, hangs,
exports into used directories, two trainers on one workdir, bad values, and one-line messages."""
import contextlib
import http.server
import json
import pathlib
import threading
import time

import pytest

from instruct_jax.evals import judge
from instruct_jax.lm import backends
from instruct_jax.lm.openai import OpenAIBackend

from tests.evals.test_judge import FakeJudge, _rating_files

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECRET = "sk-probe-0123456789abcdef"


@contextlib.contextmanager
def serve(answer):
  """A real HTTP server on 127.0.0.1 whose POST handler is `answer(handler, body)`; yields (url, requests) where
  requests records (path, headers) of each request it got."""
  requests = []

  class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
      del args

    def _any(self):
      requests.append((self.command, self.path, dict(self.headers)))
      body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
      try:
        answer(self, body)
      except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up, as it should

    do_POST = do_GET = _any  # noqa: N815

  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
  server.daemon_threads = True
  threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
  try:
    yield f"http://127.0.0.1:{server.server_port}", requests
  finally:
    server.shutdown()
    server.server_close()


def send(handler, status, payload, headers=()):
  body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
  handler.send_response(status)
  handler.send_header("Content-Length", str(len(body)))
  for k, v in headers:
    handler.send_header(k, v)
  handler.end_headers()
  handler.wfile.write(body)


def chat_answer(text):
  return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def client(url, monkeypatch, **kw):
  monkeypatch.setenv("INSTRUCT_JAX_PROBE_KEY", SECRET)
  kw = {"max_retries": 0, "backoff_s": 0.01, "timeout_s": 5.0, **kw}
  return OpenAIBackend(url + "/v1", "judge", api_key_env="INSTRUCT_JAX_PROBE_KEY", **kw)


def ask(backend):
  return backend.chat([[{"role": "user", "content": "Rate this."}]], backends.GenParams(max_new_tokens=8))


# --- credentials ---------------------------------------------------------------------------------------------

def test_a_redirect_to_another_origin_is_an_error_and_the_key_does_not_follow(monkeypatch):
  with serve(lambda h, body: send(h, 200, chat_answer("Verdict: A"))) as (elsewhere, stolen):
    with serve(lambda h, body: send(h, 302, b"", [("Location", elsewhere + "/v1/chat/completions")])) as (url, _):
      with pytest.raises(backends.BackendError, match=r"HTTP 302 redirect to .*not followed.*--base_url"):
        ask(client(url, monkeypatch, max_retries=3))
  assert stolen == []  # the other host was never asked, with or without the key


def test_a_key_the_server_echoes_reaches_no_file(tmp_path, monkeypatch):
  fake = FakeJudge()

  def echo(handler, body):
    request = json.loads(body)
    params = backends.GenParams(max_new_tokens=request["max_tokens"], seed=request["seed"])
    verdict = fake.chat(request["messages"], params)
    send(handler, 200, chat_answer(f"(you sent {handler.headers['Authorization']})\n{verdict}"))

  prompts, ours = _rating_files(tmp_path)
  config = judge.JudgeConfig("rating", prompts, (ours,), max_attempts=3)
  with serve(echo) as (url, requests):
    report = judge.run(config, client(url, monkeypatch, concurrency=2), str(tmp_path / "out"))
  assert {r[2]["Authorization"] for r in requests} == {"Bearer " + SECRET}  # it was sent, and echoed
  assert report["results"]["overall"]["counts"] == {"A": 3, "B": 3, "C": 1, "D": 1}
  written = {p: p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix != ".png"}
  assert {p.name for p in written} >= {"judge.jsonl", "requests.jsonl", "report.json"}
  for path, text in written.items():
    assert SECRET not in text and "0123456789abcdef" not in text, path
  assert "(you sent Bearer [REDACTED])" in written[tmp_path / "out" / "judge.jsonl"]


def test_a_response_over_the_size_cap_fails_clearly(monkeypatch):
  big = json.dumps(chat_answer("x" * 3_000_000)).encode()

  def chunked(handler, body):  # no Content-Length: the cap must hold while reading
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for i in range(0, len(big), 100_000):
      piece = big[i:i + 100_000]
      handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    handler.wfile.write(b"0\r\n\r\n")

  with serve(lambda h, body: send(h, 200, big)) as (url, _):
    with pytest.raises(backends.BackendError, match=r"the response is \d+ bytes, over the 1048576-byte cap"):
      ask(client(url, monkeypatch, max_response_bytes=2**20))
    assert ask(client(url, monkeypatch))[0].text == "x" * 3_000_000  # the default cap (32 MiB) takes it
  with serve(chunked) as (url, _):
    with pytest.raises(backends.BackendError, match="over the 1048576-byte cap; stopped reading it"):
      ask(client(url, monkeypatch, max_response_bytes=2**20))


# --- hangs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_server_trickling_bytes_hits_the_whole_request_deadline(monkeypatch, where):
  payload = json.dumps(chat_answer("Verdict: A")).encode()

  def trickle(handler, body):
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
    data = head + payload
    if where == "body":
      handler.wfile.write(head)
      data = payload
    for i in range(len(data)):
      handler.wfile.write(data[i:i + 1])
      handler.wfile.flush()
      time.sleep(0.1)  # each read waits well under the timeout; the whole answer takes seconds

  with serve(trickle) as (url, requests):
    start = time.monotonic()
    with pytest.raises(backends.BackendError, match=r"giving up after 2 attempts; last: no complete answer "
                                                    r"within the 1.0s deadline"):
      ask(client(url, monkeypatch, timeout_s=1.0, max_retries=1))
    took = time.monotonic() - start
  assert len(requests) == 2 and took < 4, took
