"""Backends, the HTTP client's retries, and the request cache, against a real local HTTP server."""
import json
import logging
import os
import socket

import pytest

from instruct_jax.lm.backends import BackendError, Completion, GenParams
from instruct_jax.lm.model import ModelBackend
from instruct_jax.lm.backends import ScriptedBackend, format_chat
from instruct_jax.synthetic.cache import CachedBackend, RequestCache
from instruct_jax.lm.openai import OpenAIBackend
from instruct_jax.synthetic.records import AppendOnlyJsonl

from tests.synthetic.fakes import FakeOpenAIServer


def echo_complete(prompt, params):
  if prompt == "cut":
    return Completion("partial answ", "length")
  return f"echo:{prompt}|max={params.max_new_tokens}|t={params.temperature}|seed={params.seed}"


def echo_chat(messages, params):
  del params
  return " / ".join(f"{m['role']}={m['content']}" for m in messages)


def _server(**kw):
  return FakeOpenAIServer(complete_fn=echo_complete, chat_fn=echo_chat, **kw)


def _client(url, **kw):
  kw = {"concurrency": 4, "backoff_s": 0.01, "timeout_s": 5.0, **kw}
  return OpenAIBackend(url, "test-model", **kw)


def test_completions_and_chat_over_http():
  with _server() as server:
    b = _client(server.url)
    params = GenParams(max_new_tokens=7, temperature=0.5, top_p=0.9, seed=3, presence_penalty=2.0,
                       stop=("|t=",))
    prompts = [f"p{i}" for i in range(10)] + ["cut"]
    outs = b.complete(prompts, params)
    assert [o.text for o in outs[:10]] == [f"echo:p{i}|max=7" for i in range(10)]
    assert outs[0].finish_reason == "stop"
    assert outs[10].truncated and outs[10].text == "partial answ"
    body = next(x for x in server.bodies if x.get("prompt") == "p3")
    assert body == {"model": "test-model", "prompt": "p3", "max_tokens": 7, "temperature": 0.5,
                    "top_p": 0.9, "seed": 3, "presence_penalty": 2.0, "stop": ["|t="]}
    chats = b.chat([[{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                    [{"role": "user", "content": "V"}]], GenParams())
    assert [c.text for c in chats] == ["system=S / user=U", "user=V"]
    with pytest.raises(ValueError, match="end with a user message"):
      b.chat([[{"role": "system", "content": "S"}]], GenParams())


def test_concurrency_limit():
  with _server(delay_s=0.05) as server:
    outs = _client(server.url, concurrency=3).complete([f"p{i}" for i in range(12)], GenParams())
    assert [o.text.split("|")[0] for o in outs] == [f"echo:p{i}" for i in range(12)]
    assert server.max_in_flight == 3
  with _server(delay_s=0.02) as server:
    _client(server.url, concurrency=1).complete([f"p{i}" for i in range(4)], GenParams())
    assert server.max_in_flight == 1


def test_api_key_is_sent_and_never_logged(monkeypatch, caplog):
  monkeypatch.setenv("SYNTH_TEST_KEY", "sk-very-secret-42")
  with _server(api_key="sk-very-secret-42", faults=lambda n, a: "500" if a == 0 else None) as server:
    with caplog.at_level(logging.DEBUG):
      b = _client(server.url, api_key_env="SYNTH_TEST_KEY")
      assert b.complete(["hello"], GenParams())[0].text.startswith("echo:hello")
    assert server.auth_headers == {"Bearer sk-very-secret-42"}
    assert "sk-very-secret-42" not in caplog.text
    assert "retry" in caplog.text  # the retry was logged, without the key
  with _server(api_key="sk-very-secret-42") as server:
    monkeypatch.delenv("SYNTH_TEST_KEY")
    with pytest.raises(BackendError, match="HTTP 401"):
      _client(server.url, api_key_env="SYNTH_TEST_KEY").complete(["x"], GenParams())


def test_retries_on_429_500_and_timeouts():
  plan = {1: "429", 2: "500", 3: "slow", 4: "429"}
  with _server(faults=lambda n, a: plan.get(n) if a == 0 else None, slow_s=1.5) as server:
    b = _client(server.url, timeout_s=0.4)
    outs = b.complete(["a", "b", "c", "d", "e"], GenParams())
    assert [o.text.split("|")[0] for o in outs] == ["echo:a", "echo:b", "echo:c", "echo:d", "echo:e"]
    assert server.faults["429"] == 2 and server.faults["500"] == 1 and server.faults["slow"] == 1
    assert b.retries_done == 4
    assert sum(server.attempts.values()) == 9


def test_backoff_doubles_and_honours_retry_after():
  delays = []
  with _server(faults=lambda n, a: "500" if a < 3 else None) as server:
    b = _client(server.url, backoff_s=0.1, sleep=delays.append)
    b.complete(["x"], GenParams())
  assert len(delays) == 3
  for i, d in enumerate(delays):
    assert 0.5 * 0.1 * 2 ** i <= d <= 0.1 * 2 ** i
  delays.clear()
  with _server(faults=lambda n, a: "429" if a == 0 else None, retry_after="2.5") as server:
    _client(server.url, backoff_s=0.1, sleep=delays.append).complete(["x"], GenParams())
  assert delays == [2.5]


def test_gives_up_and_does_not_retry_client_errors():
  with _server(faults=lambda n, a: "500") as server:
    with pytest.raises(BackendError, match="giving up after 3 attempts; last: HTTP 500"):
      _client(server.url, max_retries=2, sleep=lambda s: None).complete(["x"], GenParams())
    assert sum(server.attempts.values()) == 3
  with _server(faults=lambda n, a: "400") as server:
    with pytest.raises(BackendError, match="HTTP 400"):
      _client(server.url, sleep=lambda s: None).complete(["x"], GenParams())
    assert sum(server.attempts.values()) == 1


def test_connection_refused_is_retried_then_reported():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  b = _client(f"http://127.0.0.1:{port}/v1", max_retries=2, sleep=lambda s: None)
  with pytest.raises(BackendError, match="connection error"):
    b.complete(["x"], GenParams())
  assert b.retries_done == 2


def test_model_backend_wraps_a_generate_fn():
  calls = []

  def generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed):
    calls.append((list(prompts), max_new_tokens, temperature, top_p, seed))
    return [p.upper() + " END more" for p in prompts]

  b = ModelBackend(generate_fn, model="tiny", batch_size=2)
  outs = b.complete(["a", "b", "c"], GenParams(max_new_tokens=5, temperature=0.3, top_p=0.8,
                                                 seed=9, stop=(" END",)))
  assert [o.text for o in outs] == ["A", "B", "C"]
  assert all(o.finish_reason == "stop" for o in outs)
  assert calls == [(["a", "b"], 5, 0.3, 0.8, 9), (["c"], 5, 0.3, 0.8, 9)]
  assert b.complete(["z"], GenParams())[0].finish_reason is None   # no stop string: unknown
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
  b.chat([chat], GenParams())
  assert calls[-1][0] == [format_chat(chat)] == ["System: Be brief.\n\nUser: Hi\n\nAssistant:"]
  bad = ModelBackend(lambda prompts, **kw: ["only one"])
  with pytest.raises(BackendError, match="returned 1 texts for 2 prompts"):
    bad.complete(["a", "b"], GenParams())


def test_scripted_backend_list_mode():
  b = ScriptedBackend(responses=["one STOP two", Completion("cut", "length")])
  outs = b.complete(["p", "q"], GenParams(stop=("STOP",)))
  assert outs == [Completion("one ", "stop"), Completion("cut", "length")]
  with pytest.raises(BackendError, match="ran out"):
    b.complete(["r"], GenParams())


def test_cache_answers_repeats_from_disk(tmp_path):
  path = str(tmp_path / "cache" / "requests.jsonl")
  inner = ScriptedBackend(echo_complete, echo_chat)
  cached = CachedBackend(inner, RequestCache(path))
  first = cached.complete(["a", "b", "a"], GenParams())
  assert len(inner.calls) == 2   # the repeated prompt in one batch is sent once
  again = CachedBackend(inner, RequestCache(path))   # a new process reading the same file
  assert again.complete(["b", "a"], GenParams()) == [first[1], first[0]]
  assert len(inner.calls) == 2 and again.cache.hits == 2
  again.complete(["a"], GenParams(seed=1))   # any parameter change is a new request
  assert len(inner.calls) == 3
  chat = [{"role": "user", "content": "hi"}]
  again.chat([chat], GenParams())
  again.chat([chat], GenParams())
  assert len(inner.calls) == 4


def test_cache_key_ignores_server_address_and_key(tmp_path, monkeypatch):
  path = str(tmp_path / "requests.jsonl")
  monkeypatch.setenv("SYNTH_TEST_KEY", "sk-cache-secret")
  with _server() as s1:
    CachedBackend(_client(s1.url, api_key_env="SYNTH_TEST_KEY"), RequestCache(path)).complete(
        ["a", "b"], GenParams())
    assert s1.served == 2
  monkeypatch.setenv("SYNTH_TEST_KEY", "sk-other")
  with _server() as s2:
    outs = CachedBackend(_client(s2.url, api_key_env="SYNTH_TEST_KEY"),
                         RequestCache(path)).complete(["a", "b"], GenParams())
    assert s2.served == 0 and outs[0].text.startswith("echo:a")
  text = open(path, encoding="utf-8").read()
  assert "sk-cache-secret" not in text and "sk-other" not in text and "127.0.0.1" not in text


def test_append_only_jsonl_repairs_a_torn_last_line(tmp_path):
  path = str(tmp_path / "x.jsonl")
  f = AppendOnlyJsonl(path, "id")
  f.append({"id": "a", "v": 1})
  f.append({"id": "b", "v": 2})
  f.close()
  with open(path, "ab") as raw:
    raw.write(b'{"id": "c", "v"')   # a write cut short by SIGKILL
  g = AppendOnlyJsonl(path, "id")
  assert sorted(g.entries) == ["a", "b"] and g.repaired_bytes == 15
  g.append({"id": "c", "v": 3})
  g.close()
  lines = open(path, encoding="utf-8").read().splitlines()
  assert [json.loads(x)["id"] for x in lines] == ["a", "b", "c"]
  with open(path, "a", encoding="utf-8") as raw:
    raw.write("not json\n")
    raw.write('{"id": "d"}\n')
  with pytest.raises(ValueError, match=r"x.jsonl:4: invalid JSON"):
    AppendOnlyJsonl(path, "id")
  os.remove(path)
