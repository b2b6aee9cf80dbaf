"""Restart settings, SIGTERM while waiting for data, secrets in server text, and every CLI's --help."""
import http.server
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from instruct_jax import configs, errors, loop
from instruct_jax import workdir as workdir_lib
from instruct_jax.lm import backends, openai as openai_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _recorded(tmp_path, **changes):
  config = configs.load(ROOT / "configs" / "tiny.py")
  workdir_lib.write_config(tmp_path, config)
  for key, value in changes.items():
    *parents, leaf = key.split(".")
    section = config
    for p in parents:
      section = section[p]
    section[leaf] = value
  return config


def test_a_restart_may_change_only_the_resumable_keys(tmp_path):
  config = _recorded(tmp_path, total_steps=99, **{"eval.num_examples": 3, "mesh.data": 2})
  changed = workdir_lib.check_restart(tmp_path, config)
  assert changed == {"total_steps": [20, 99], "eval.num_examples": [2, 3], "mesh.data": [-1, 2]}
  workdir_lib.record_resume(tmp_path, step=5, changed=changed)
  workdir_lib.write_config(tmp_path, config)  # config.json is written once: the original stays
  assert json.loads((tmp_path / "config.json").read_text())["total_steps"] == 20
  row, = [json.loads(line) for line in (tmp_path / workdir_lib.RESUME_HISTORY).read_text().splitlines()]
  assert row["resumed_from_step"] == 5 and row["changed"]["total_steps"] == [20, 99]


@pytest.mark.parametrize("key, value", [("model.size", "small"), ("tokenizer.vocab_size", 400), ("seed", 1),
                                        ("data.mixture", "builtin"), ("optim.learning_rate", 0.1),
                                        ("model.overrides.num_heads", 4),
                                        ("data_paths.instruction_files.mine", "x.jsonl")])
def test_a_restart_that_changes_the_model_tokenizer_or_data_is_refused_naming_the_key(tmp_path, key, value):
  if key.startswith("data_paths.instruction_files"):
    config = _recorded(tmp_path)
    config.data_paths.instruction_files["mine"] = value
  else:
    config = _recorded(tmp_path, **{key: value})
  with pytest.raises(workdir_lib.WorkdirError, match=f"--config.{key} .* -> ") as e:
    workdir_lib.check_restart(tmp_path, config, flag_keys=[key])
  assert "\n" not in str(e.value) and "no checkpoint yet: remove it" in str(e.value)


def test_a_restart_may_add_change_or_remove_evaluators(tmp_path):
  config = configs.load(ROOT / "configs" / "tiny.py")
  config.evals.ni = "kind=superni,split=test,every=100"
  config.evals.mine = dict(kind="tasks", tasks=("builtin_check",), every=0)
  workdir_lib.write_config(tmp_path, config)
  restart = configs.load(ROOT / "configs" / "tiny.py")
  restart.evals.ni = "kind=superni,split=test,every=50"
  restart.evals.extra = "kind=tasks,tasks=builtin/reverse"
  changed = workdir_lib.check_restart(tmp_path, restart)
  assert changed == {"evals.ni": ["kind=superni,split=test,every=100", "kind=superni,split=test,every=50"],
                     "evals.mine": [{"kind": "tasks", "tasks": ["builtin_check"], "every": 0}, None],
                     "evals.extra": [None, "kind=tasks,tasks=builtin/reverse"]}


def test_sigterm_while_waiting_for_data_stops_the_wait():
  """A batch that never comes (a stalled reader) must not make the trainer ignore SIGTERM."""
  preemption = loop.Preemption()

  def stalled():
    while True:
      time.sleep(0.01)
      yield None
  it = (x for x in stalled() if x is not None)
  threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
  start = time.time()
  try:
    with pytest.raises(loop.PreemptedWaitingForData):
      preemption.next_batch(it)
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
  assert time.time() - start < 10 and preemption.requested


class _EchoHeaders(http.server.BaseHTTPRequestHandler):
  """A misbehaving server: answers 400 with the request's headers in the body."""

  def do_POST(self):  # noqa: N802
    self.rfile.read(int(self.headers.get("Content-Length", 0)))
    body = json.dumps({"error": "bad request", "headers": dict(self.headers)}).encode()
    self.send_response(400)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


def test_server_text_is_printed_without_the_api_key(monkeypatch):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoHeaders)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  secret = "sk-test-0123456789abcdef"
  monkeypatch.setenv("INSTRUCT_JAX_TEST_KEY", secret)
  try:
    backend = openai_backend.OpenAIBackend(f"http://127.0.0.1:{server.server_port}/v1", "m",
                                           api_key_env="INSTRUCT_JAX_TEST_KEY", max_retries=0)
    with pytest.raises(backends.BackendError) as e:
      backend.complete(["hi"], backends.GenParams(max_new_tokens=4))
  finally:
    server.shutdown()
  message = str(e.value)
  assert "HTTP 400" in message and "Authorization" in message  # the server did echo it ...
  assert secret not in message and "0123456789abcdef" not in message and "[REDACTED]" in message  # ... not shown


@pytest.mark.slow  # two subprocesses that import jax: 9 s
@pytest.mark.parametrize("module, own_flags", [
    ("instruct_jax.train", ["--config", "--workdir", "--dry_run"]),
    ("instruct_jax.data.preview", ["--mixture", "--inputs_length"]),
])
def test_help_lists_the_commands_own_flags(module, own_flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120).stdout
  for flag in own_flags:
    assert f"  {flag}" in out, (flag, out[-2000:])


def test_output_flags_refuse_urls_that_would_become_local_directories(tmp_path):
  from absl import flags
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "", flag_values=fv)
  errors.local_path_flags("workdir", flag_values=fv)
  fv(["prog", "--workdir=/mnt/bucket/run"])  # a mounted bucket is a path
  for url in ("gs://bucket/run", "s3://b/r", "file:///tmp/x"):
    with pytest.raises(flags.IllegalFlagValueError, match=f"--workdir={url}: a URL is not a local path.*mount"):
      fv(["prog", f"--workdir={url}"])
  # The trainer itself: one line, status 2, and no ./gs:/bucket directory made.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-m", "instruct_jax.train", "--config", str(ROOT / "configs/tiny.py"),
                        "--workdir", "gs://bucket/tiny", "--dry_run"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
  assert run.returncode == 2 and "error: flag --workdir=gs://bucket/tiny: a URL is not a local path" in run.stderr
  assert not (tmp_path / "gs:").exists()
