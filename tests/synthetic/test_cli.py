"""The synthetic-data commands as subprocesses: dashed flags, errors, and SIGKILL + restart."""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from absl import flags

from instruct_jax.synthetic import cli

from tests.synthetic.fakes import TOPICS, FakeOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[2]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  env.pop("OPENAI_API_KEY", None)
  return env


def _write(path, rows):
  with open(path, "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return str(path)


def _seeds(tmp_path):
  verbs = ["Explain", "Summarize the debate about", "List three facts about", "Classify a claim about",
           "Give tips on", "Describe the history of"]
  return _write(tmp_path / "seeds.jsonl", [
      {"id": f"s{i}", "instruction": f"{verbs[i % 6]} {TOPICS[i]} for readers of case {i}.",
       "instances": [{"input": "", "output": f"About {TOPICS[i]}."}],
       "is_classification": i % 6 == 3} for i in range(14)])


def test_normalize_argv_accepts_dashes():
  fv = flags.FlagValues()
  flags.DEFINE_string("base_url", None, "", flag_values=fv)
  flags.DEFINE_integer("num_instructions", None, "", flag_values=fv)
  flags.DEFINE_bool("progress", True, "", flag_values=fv)
  argv = ["prog", "--base-url=http://x", "--num-instructions", "5", "--no-progress",
          "--unknown-flag=1", "-v", "--", "--base-url"]
  assert cli.normalize_argv(argv, fv) == [
      "prog", "--base_url=http://x", "--num_instructions", "5", "--noprogress",
      "--unknown-flag=1", "-v", "--", "--base-url"]


def _inputs(tmp_path):
  seeds = _seeds(tmp_path)
  queries = _write(tmp_path / "q.jsonl", [
      {"collection": ["cot", "niv2", "t0", "flan2021"][i % 4], "task": f"t{i % 5}",
       "instruction": f"Why is {TOPICS[i]} interesting?"} for i in range(12)])
  texts = _write(tmp_path / "t.jsonl", [{"text": f"All about {t}, in depth."} for t in TOPICS[:12]])
  return {
      "self_instruct": ["--seed-tasks", seeds, "--requests-per-step", "2"],
      "evol_instruct": ["--instructions", seeds, "--rounds", "2"],
      "orca": ["--queries", queries],
      "backtranslation": ["--texts", texts, "--seed-data", seeds, "--min-score", "3"],
      "curation": ["--inputs", f"seeds={seeds}", "--min-output-chars", "5", "--lm-rating",
                   "--min-lm-score", "3"],
  }


@pytest.mark.parametrize("method", ["self_instruct", "evol_instruct", "orca", "backtranslation",
                                    "curation"])
def test_each_command_runs_with_dashed_flags(method, tmp_path):
  with FakeOpenAIServer() as server:
    cmd = [sys.executable, "-m", f"instruct_jax.synthetic.{method}", *_inputs(tmp_path)[method],
           "--backend", "openai", "--base-url", server.url, "--model", "fake",
           "--out", str(tmp_path / "out"), "--num-instructions", "6", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"{method}: " in proc.stdout and "requests answered from the cache" in proc.stdout
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["records_total"] > 0 and report["cache_misses"] == server.served


def test_missing_flag_is_a_clear_error(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.synthetic.self_instruct",
                         "--out", str(tmp_path), "--num-instructions", "3", "--model", "m",
                         "--base-url", "http://127.0.0.1:9/v1"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0
  assert "--seed_tasks is required" in proc.stderr


def _lines(path):
  try:
    with open(path, "rb") as f:
      return f.read().count(b"\n")
  except FileNotFoundError:
    return 0


def test_sigkill_and_restart_equals_an_uninterrupted_run(tmp_path):
  seeds = _seeds(tmp_path)
  with FakeOpenAIServer(delay_s=0.04) as server:
    def cmd(out):
      return [sys.executable, "-m", "instruct_jax.synthetic.self_instruct", "--seed-tasks", seeds,
              "--backend", "openai", "--base-url", server.url, "--model", "fake",
              "--out", str(out), "--num-instructions", "36", "--requests-per-step", "3",
              "--concurrency", "3", "--no-progress"]

    ref, crash = tmp_path / "ref", tmp_path / "crash"
    subprocess.run(cmd(ref), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    total_requests = _lines(ref / "cache" / "requests.jsonl")
    ref_records = _lines(ref / "self_instruct.jsonl")
    assert total_requests > 20 and ref_records > 10
    kills = 0
    for fraction in (0.3, 0.6, 0.85):
      proc = subprocess.Popen(cmd(crash), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
      deadline = time.time() + 60
      while (_lines(crash / "cache" / "requests.jsonl") < fraction * total_requests
             and proc.poll() is None and time.time() < deadline):
        time.sleep(0.002)
      if proc.poll() is None:
        proc.kill()   # SIGKILL: no cleanup, no flush beyond what was already written
        kills += 1
      proc.wait()
      assert _lines(crash / "self_instruct.jsonl") < ref_records
    assert kills == 3
    subprocess.run(cmd(crash), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
  assert (crash / "self_instruct.jsonl").read_bytes() == (ref / "self_instruct.jsonl").read_bytes()
  ref_report = json.loads((ref / "report.json").read_text())
  crash_report = json.loads((crash / "report.json").read_text())
  assert crash_report["counts"] == ref_report["counts"]
  assert crash_report["cache_misses"] < total_requests   # the restarts reused earlier answers
