"""The second fault probe's cases (issue 28), each reproduced: credentials and servers that misbehave, hangs,
exports into used directories, two trainers on one workdir, bad values, and one-line messages."""
import contextlib
import http.server
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from instruct_jax import configs, errors, plan, sampling, train
from instruct_jax import workdir as workdir_lib
from instruct_jax.data import sources
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


def test_the_judge_command_reports_a_redirect_on_one_line_and_exits_non_zero(tmp_path):
  from tests.evals.test_judge import _judge_cli
  prompts, ours = _rating_files(tmp_path)
  with serve(lambda h, body: send(h, 200, chat_answer("Verdict: A"))) as (elsewhere, stolen):
    with serve(lambda h, body: send(h, 307, b"", [("Location", elsewhere + "/v1/chat/completions")])) as (url, _):
      proc = _judge_cli("--mode", "rating", "--prompts", prompts, "--predictions", ours, "--backend", "openai",
                        "--base-url", url + "/v1", "--model", "judge", "--out", tmp_path / "out", "--no-progress")
  assert proc.returncode == 2 and "HTTP 307 redirect to" in proc.stderr, proc.stderr[-2000:]
  assert len(proc.stderr.strip().splitlines()) == 1 and stolen == []


# --- two trainers, one workdir -------------------------------------------------------------------------------

def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _train_cli(workdir, *extra, timeout=300):
  return subprocess.run([sys.executable, "-m", "instruct_jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
                         f"--workdir={workdir}", "--config.eval.num_examples=0", *extra], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


HOLD = ("import sys, time\nfrom instruct_jax import workdir\nwith workdir.lock(sys.argv[1]):\n"
        "  print('held', flush=True)\n  time.sleep(120)\n")


def test_a_workdir_in_use_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, capsys):
  work = tmp_path / "run"
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(work)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    host = socket.gethostname()
    with pytest.raises(workdir_lib.WorkdirError, match=rf"--workdir {work} is in use by another trainer \(pid "
                                                       rf"{holder.pid} on {re.escape(host)}, started 20"):
      with workdir_lib.lock(work):
        pass
    config = configs.load(ROOT / "configs" / "tiny.py")
    with pytest.raises(workdir_lib.WorkdirError, match="is in use by another trainer"):
      train.train_and_evaluate(config, str(work))
    assert sorted(p.name for p in work.iterdir()) == ["lock"]  # the refused trainer wrote nothing
  finally:
    holder.kill()
    holder.wait()
  with workdir_lib.lock(work):  # killed: its flock went with it; the record names it, and is taken over
    record = json.loads((work / "lock").read_text())
    assert record["pid"] == os.getpid() and record["host"] == host
  assert f"was last locked by pid {holder.pid} on {host}, which is no longer running" in capsys.readouterr().out
  assert json.loads((work / "lock").read_text())["released"] is True
  # A workdir that is a file is a one-line error, not a FileExistsError.
  (tmp_path / "file").write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="--workdir .*/file is a file, not a directory"):
    with workdir_lib.lock(tmp_path / "file"):
      pass
  # A refused config leaves no directory behind.
  config.optim.b2 = 1.5
  with pytest.raises(configs.ConfigError, match=r"config.optim.b2=1.5: must be a number in \[0, 1\)"):
    train.train_and_evaluate(config, str(tmp_path / "new"))
  assert not (tmp_path / "new").exists()


@pytest.mark.slow  # two tiny trainers at once: 40 s
def test_two_trainers_started_half_a_second_apart(tmp_path):
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={ROOT / 'configs' / 'tiny.py'}",
         f"--workdir={tmp_path / 'run'}", "--config.eval.num_examples=0", "--config.total_steps=12",
         "--config.checkpoint_every=4"]
  first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(0.5)
  second = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  outs = [p.communicate(timeout=300) for p in (first, second)]
  codes = sorted([first.returncode, second.returncode])
  assert codes == [0, 2], [o[1][-2000:] for o in outs]
  refused = outs[[first.returncode, second.returncode].index(2)][1]
  assert "is in use by another trainer" in refused and len(refused.strip().splitlines()) == 1, refused
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "train/loss" in r]
  assert steps == list(range(1, 13))  # every step logged once


@pytest.mark.slow  # a trainer on a 900 KiB tmpfs, twice: 30 s
@pytest.mark.parametrize("size", ["600k", "900k"])
def test_a_full_disk_is_one_line_naming_the_checkpoint(tmp_path, size):
  mount = tmp_path / "small"
  mount.mkdir()
  made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
  if made.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()})")
  try:
    proc = _train_cli(mount / "run", "--config.total_steps=10", "--config.checkpoint_every=5")
  finally:
    subprocess.run(["umount", str(mount)], check=True)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
  assert re.match(rf"error: {mount}/run/checkpoints/5: (No space left on device|the checkpoint could not be "
                  r"written \(No space left on device\)).*free space, or restart with another --workdir", proc.stderr)


def test_storage_causes_are_found_through_wrappers():
  inner = OSError(28, "No space left on device", "/w/metrics.jsonl")
  try:
    try:
      raise inner
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as outer:
    assert errors.storage_cause(outer) == "/w/metrics.jsonl: No space left on device"
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing "x": Failed to write 9 bytes to file 19: No space '
                           "left on device [os_error_code='28']")
  assert errors.storage_cause(tensorstore) == "No space left on device"
  assert errors.storage_cause(ValueError("os_error_code='30'")) == "Read-only file system"
  assert errors.storage_cause(ValueError("shapes differ")) is None


# --- values accepted without a word ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, interval", [
    ("optim.learning_rate", -1e-3, "[0, inf)"), ("optim.learning_rate", float("nan"), "[0, inf)"),
    ("optim.b2", 1.5, "[0, 1)"), ("optim.weight_decay", -0.1, "[0, inf)"), ("total_steps", -5, "[0, inf)"),
    ("eval.batch_size", 0, "[1, inf)"), ("log_every", 0, "[1, inf)"), ("data.render.few_shot_rate", 1.5, "[0, 1]"),
    ("loss.label_smoothing", 1.0, "[0, 1)"), ("optim.grad_clip_norm", float("inf"), "[0, inf)"),
])
def test_out_of_range_values_are_refused_naming_the_flag(key, value, interval):
  config = configs.load(ROOT / "configs" / "tiny.py")
  *parents, leaf = key.split(".")
  section = config
  for p in parents:
    section = section[p]
  section[leaf] = value
  with pytest.raises(configs.ConfigError, match=re.escape(f"--config.{key}={value!r}: must be a number in "
                                                          f"{interval}")):
    configs.validate(config, flag_keys=[key])
  with pytest.raises(configs.ConfigError, match=re.escape(f"config.{key}=")):
    plan.resolve(config, dry=True)  # before anything else: the dry run refuses it too


def test_every_range_names_a_numeric_key_and_the_shipped_configs_are_in_range():
  known = configs.leaves(configs.base())
  for key, interval in configs.RANGES.items():
    assert key in known, key
    assert known[key] is None or configs.in_range(float(known[key]), interval), (key, known[key])
  for path in sorted((ROOT / "configs").rglob("*.py")):
    if not path.name.startswith("_"):
      configs.check_ranges(configs.load(path))


def test_the_train_command_refuses_a_bad_value_before_any_work(tmp_path):
  proc = _train_cli(tmp_path / "run", "--config.optim.b2=1.5")
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: --config.optim.b2=1.5: must be a number in [0, 1)"), proc.stderr[-2000:]
  assert not (tmp_path / "run").exists()


SLOW = pytest.mark.slow  # a subprocess each: 3 s


@pytest.mark.parametrize("flag, message", [
    pytest.param("--temperature=-0.5", "flag --temperature=-0.5: must be a number >= 0", marks=SLOW),
    ("--top_p=1.5", "flag --top_p=1.5: must be a number in (0, 1]"),
    pytest.param("--top_p=0", "flag --top_p=0.0: must be a number in (0, 1]", marks=SLOW),
    pytest.param("--max_new_tokens=0", "flag --max_new_tokens=0: must be a number >= 1", marks=SLOW),
])
def test_generate_refuses_bad_decoding_flags_before_loading(tmp_path, flag, message):
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.generate", f"--workdir={tmp_path / 'nowhere'}",
                         "--prompt=hi", flag], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_library_decoding_settings_refuse_the_same_values():
  for bad in (dict(temperature=-1.0), dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5),
              dict(top_k=-1)):
    with pytest.raises(ValueError, match="need temperature >= 0, top_p in"):
      sampling.DecodeConfig(**bad)
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
    backends.GenParams(top_p=0.0)


@pytest.mark.parametrize("line, message", [
    ('{"instruction": "a", "output": "b", "output": "c"}', "malformed JSON line: duplicate key 'output' at column"),
    ("[" * 100_000 + "]" * 100_000, "malformed JSON line: nested too deeply to read"),
])
def test_duplicate_keys_and_deep_nesting_name_the_file_and_line(tmp_path, line, message):
  path = tmp_path / "data.jsonl"
  path.write_text('{"instruction": "ok", "output": "fine"}\n' + line + "\n")
  with pytest.raises(sources.DataError, match=re.escape(f"{path}:2: {message}")):
    sources.read_jsonl(str(path))


def test_rows_longer_than_the_checkpoints_positions_are_refused(tmp_path):
  hf_models = pytest.importorskip("tests.convert.hf_models")
  src = hf_models.save(hf_models.build("llama3"), tmp_path / "llama", "llama3")
  hf_models.train_spm(src / "tokenizer.model", llama_ids=True)
  blob = json.loads((src / "config.json").read_text())
  blob["max_position_embeddings"] = 40
  (src / "config.json").write_text(json.dumps(blob))
  config = configs.load(ROOT / "configs" / "finetune.py")
  config.init_from, config.data.mixture = str(src), "builtin_no_check"
  config.data.inputs_length, config.data.targets_length = 32, 16
  with pytest.raises(configs.ConfigError, match=re.escape(
      "--config.data.inputs_length + --config.data.targets_length = 48 tokens, beyond the 40 positions "
      f"config.init_from={src} was made for (its max_position_embeddings)")):
    plan.resolve(config, flag_keys=["data.inputs_length", "data.targets_length"])
  config.data.targets_length = 8
  assert plan.resolve(config).data.lengths()["decoder_input_tokens"] == 40


def test_a_batch_the_mesh_cannot_split_is_refused_naming_the_flag():
  from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from instruct_jax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})  # the 8 faked devices
  config = configs.base()
  config.data.batch_size = 12
  problem = plan_lib.batch_problem(config, mesh, ["data.batch_size"])
  assert problem.startswith("--config.data.batch_size=12: the batch's 12 rows are split over the mesh's data and "
                            "fsdp axes, 8 devices here; make it a multiple of 8")
  config.data.batch_size = 16
  assert plan_lib.batch_problem(config, mesh) is None
  config.objective, config.data.batch_size = "dpo", 4  # 4 pairs are 8 rows
  assert plan_lib.batch_problem(config, mesh) is None
  config.data.batch_size = 2
  assert "4 rows (two per pair)" in plan_lib.batch_problem(config, mesh) and "a multiple of 4" in \
      plan_lib.batch_problem(config, mesh)
