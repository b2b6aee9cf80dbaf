"""The LM judge against a real local OpenAI-format HTTP server: rating, pairwise in both orders, strict
verdicts with retries, resume after a crash, the command line, and the bootstrap intervals."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from instruct_jax import errors
from instruct_jax.evals import judge
from instruct_jax.lm.openai import OpenAIBackend

from tests.synthetic.fakes import FakeOpenAIServer

REPO = pathlib.Path(__file__).resolve().parents[2]
GRADES = {"good": "A", "fine": "B", "flawed": "C", "junk": "D"}


class FakeJudge:
  """Deterministic verdicts read off the judged texts.

  Rating: an output's first word picks the grade (GRADES); "garbled" gets an answer without a verdict
  at seed 0 and "Verdict: B" after; "hopeless" never gets a readable verdict. Pairwise: the response
  with more "+" wins; equal ones make the judge pick response 1 (a position bias), and "hopeless" in
  either response gives two verdict lines that disagree.
  """

  def chat(self, messages, params):
    user = messages[-1]["content"]
    if "Response 1:\n" in user:
      first = user.split("Response 1:\n", 1)[1].split("\n\nResponse 2:\n", 1)[0]
      second = user.split("\n\nResponse 2:\n", 1)[1].split("\n\nGive a short", 1)[0]
      if "hopeless" in first + second:
        return "Verdict: 1\nOn reflection:\nVerdict: 2"
      a, b = first.count("+"), second.count("+")
      return "Both fine; the first reads better.\nVerdict: 1" if a == b else f"Verdict: {1 if a > b else 2}"
    output = user.split("Response:\n", 1)[1].split("\n\nGive a short", 1)[0]
    word = output.split()[0]
    if word == "garbled":
      return "It is hard to say." if params.seed == 0 else "Mostly right.\n**Verdict: B**"
    if word == "hopeless":
      return "Verdict: maybe"
    return f"Reasons.\nVerdict: {GRADES[word]}"


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
  return str(path)


def _prompts(n):
  return [{"instruction": f"Write note {i} about tea.", "input": "green" if i % 2 else "",
           "app": ["mail", "maps", "notes"][i % 3]} for i in range(n)]


RATED = ["good a", "fine b", "flawed c", "junk d", "good e", "garbled f", "hopeless g", "good h", "fine i"]
PAIRS = [("+++", "+"), ("+", "++"), ("++ left", "++ right"), ("hopeless", "+"), ("++++", ""), ("", "+")]


def _rating_files(tmp_path):
  prompts = _prompts(len(RATED))
  return (_write(tmp_path / "prompts.jsonl", prompts),
          _write(tmp_path / "ours.jsonl", [{**p, "output": o} for p, o in zip(prompts, RATED)]))


def _pairwise_files(tmp_path):
  prompts = _prompts(len(PAIRS))
  return (_write(tmp_path / "prompts.jsonl", prompts),
          _write(tmp_path / "a.jsonl", [{**p, "output": f"answer {a}"} for p, (a, _) in zip(prompts, PAIRS)]),
          _write(tmp_path / "b.jsonl", [{**p, "output": f"answer {b}"} for p, (_, b) in zip(prompts, PAIRS)]))


def _backend(server):
  return OpenAIBackend(server.url, "fake-judge", concurrency=4, max_retries=2, backoff_s=0.01)


def _lines(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def test_parse_verdict_reads_only_whole_verdict_lines():
  assert judge.parse_verdict("Good.\nVerdict: A", "rating") == "A"
  assert judge.parse_verdict("verdict: c.\n", "rating") == "C"
  assert judge.parse_verdict("**Verdict:** D", "rating") == "D"
  assert judge.parse_verdict("Verdict: B\nVerdict: B", "rating") == "B"
  assert judge.parse_verdict("End with a line\nVerdict: X\nSo:\nVerdict: A", "rating") == "A"  # an echoed format line
  for bad in ("A", "I would say the verdict: A is fair", "Verdict: A or B", "Verdict: E",
              "Verdict: A\nVerdict: C", ""):
    assert judge.parse_verdict(bad, "rating") is None, bad
  assert judge.parse_verdict("Verdict: tie", "pairwise") == "tie"
  assert judge.parse_verdict("Verdict: 2", "pairwise") == "2"
  assert judge.parse_verdict("Verdict: A", "pairwise") is None


def test_both_orders_combine_as_a_sum():
  assert judge.outcome_for_a("1", "ab") == "win" and judge.outcome_for_a("1", "ba") == "loss"
  assert judge.outcome_for_a("2", "ba") == "win" and judge.outcome_for_a("tie", "ba") == "tie"
  table = {("win", "win"): "win", ("win", "tie"): "win", ("tie", "win"): "win", ("tie", "tie"): "tie",
           ("win", "loss"): "tie", ("loss", "win"): "tie", ("loss", "tie"): "loss", ("loss", "loss"): "loss",
           ("win", None): None, (None, "tie"): None}
  for (a, b), want in table.items():
    assert judge.combine(a, b) == want, (a, b)


def test_a_prediction_without_the_prompts_input_is_refused(tmp_path):
  prompts = [{"instruction": "Sort.", "input": "3 1 2"}]
  config = judge.JudgeConfig(mode="rating", prompts=_write(tmp_path / "p.jsonl", prompts),
                             predictions=(_write(tmp_path / "o.jsonl", [{"instruction": "Sort.", "output": "1 2 3"}]),))
  with pytest.raises(errors.UserError, match="o.jsonl:1: its instruction/input differ"):
    judge.load_items(config)


def test_bootstrap_interval():
  cats = ("win", "tie", "loss")
  half = {"half": {"win": 1.0, "tie": 0.5}}
  ci = judge.bootstrap_ci(["win"] * 20, cats, scores=half)
  assert ci["win"] == (1.0, 1.0) and ci["loss"] == (0.0, 0.0) and ci["half"] == (1.0, 1.0)
  labels = ["win"] * 30 + ["tie"] * 10 + ["loss"] * 20
  ci = judge.bootstrap_ci(labels, cats, samples=2000, seed=3, scores=half)
  for name, point in (("win", 0.5), ("tie", 1 / 6), ("loss", 1 / 3), ("half", 35 / 60)):
    lo, hi = ci[name]
    assert lo < point < hi and hi - lo < 0.4, (name, ci[name])
  assert judge.bootstrap_ci(labels, cats, samples=2000, seed=3, scores=half) == ci   # seeded
  assert judge.bootstrap_ci(labels, cats, samples=2000, seed=4, scores=half) != ci
  narrow = judge.bootstrap_ci(labels, cats, samples=2000, seed=3, level=0.5)["win"]
  assert ci["win"][0] < narrow[0] < narrow[1] < ci["win"][1]
  assert judge.bootstrap_ci([], cats) == {}


def test_rating_counts_retries_groups_and_a_free_rerun(tmp_path):
  prompts, ours = _rating_files(tmp_path)
  config = judge.JudgeConfig("rating", prompts, (ours,), group_by="app", max_attempts=3)
  with FakeOpenAIServer(chat_fn=FakeJudge().chat) as server:
    report = judge.run(config, _backend(server), str(tmp_path / "out"))
    served = server.served
    again = judge.run(config, _backend(server), str(tmp_path / "out"))
    assert server.served == served   # the rerun asks nothing
  overall = report["results"]["overall"]
  assert overall["counts"] == {"A": 3, "B": 3, "C": 1, "D": 1}   # garbled -> B on its retry
  assert overall["n"] == 9 and overall["judged"] == 8 and overall["unparsable"] == 1
  assert overall["shares"]["A"] == pytest.approx(3 / 8)
  assert report["counts"]["questions"] == {"parsed": 7, "parsed_after_retry": 1, "unparsable": 1}
  assert report["counts"]["answers"] == {"parsed": 8, "unparsable": 1 + 3}
  assert served == 9 + 1 + 2   # 9 questions, garbled retried once, hopeless twice
  groups = report["results"]["groups"]
  assert list(groups) == ["mail", "maps", "notes"]
  assert groups["mail"]["counts"] == {"A": 1, "B": 0, "C": 0, "D": 1}   # prompts 0, 3, 6 (hopeless)
  assert groups["mail"]["unparsable"] == 1
  # Retries go with the next seed and at least --retry_temperature; the first asks are greedy.
  garbled = [b for b in server.bodies if "garbled f" in b["messages"][-1]["content"]]
  assert [(b["seed"], b["temperature"]) for b in garbled] == [(0, 0.0), (1, 0.7)]
  records = _lines(tmp_path / "out" / "judge.jsonl")
  assert [r["id"] for r in records] == [f"judge-{i:06d}" for i in range(9)]
  hopeless = records[6]
  assert hopeless["verdict"] is None and len(hopeless["judgements"][0]["answers"]) == 3
  assert again["records_new"] == 0 and again["records_reused"] == 9 and again["results"] == report["results"]
  assert (tmp_path / "out" / "report.png").stat().st_size > 1000
  assert json.loads((tmp_path / "out" / "report.json").read_text())["results"] == report["results"]
  assert "app=maps" in report["table"]


def test_pairwise_judges_both_orders_and_reports_win_rates(tmp_path):
  prompts, a, b = _pairwise_files(tmp_path)
  config = judge.JudgeConfig("pairwise", prompts, (a, b), names=("ours", "base"), max_attempts=2)
  with FakeOpenAIServer(chat_fn=FakeJudge().chat) as server:
    report = judge.run(config, _backend(server), str(tmp_path / "out"))
  overall = report["results"]["overall"]
  # +++ vs +: win; + vs ++: loss; ++ vs ++ (other words): the judge picks position 1 both times -> tie; hopeless:
  # unparsable; ++++ vs "": win; "" vs +: loss.
  assert overall["counts"] == {"win": 2, "tie": 1, "loss": 2} and overall["unparsable"] == 1
  assert overall["win_rate_ties_half"] == pytest.approx(2.5 / 5)
  assert overall["orders_agree"] == pytest.approx(4 / 5)
  lo, hi = overall["ci"]["win"]
  assert lo <= overall["shares"]["win"] <= hi
  assert report["counts"]["orders"] == {"agree": 4, "disagree": 1}
  # The server saw every pair in both orders: once with A's output first, once with B's.
  seen = set()
  for body in server.bodies:
    user = body["messages"][-1]["content"]
    first = user.split("Response 1:\n", 1)[1].split("\n\nResponse 2:", 1)[0]
    second = user.split("Response 2:\n", 1)[1].split("\n\nGive a short", 1)[0]
    seen.add((re.search(r"note (\d+)", user).group(1), first, second))
  for i, (x, y) in enumerate(PAIRS):
    assert (str(i), f"answer {x}", f"answer {y}") in seen and (str(i), f"answer {y}", f"answer {x}") in seen
  assert len(server.bodies) == 2 * len(PAIRS) + 2   # the hopeless pair's two orders are asked twice
  record = _lines(tmp_path / "out" / "judge.jsonl")[2]
  assert [j["order"] for j in record["judgements"]] == ["ab", "ba"]
  assert [j["outcome_for_a"] for j in record["judgements"]] == ["win", "loss"] and record["outcome"] == "tie"
  assert "ours (A) vs base (B)" in report["table"]


class CrashAfter:
  """Passes requests on until `n` have been sent, then raises: a run dying mid-way."""

  def __init__(self, backend, n):
    self.backend, self.n, self.sent = backend, n, 0
    self.kind, self.model = backend.kind, backend.model

  def chat(self, conversations, params):
    if self.sent + len(conversations) > self.n:
      raise RuntimeError("injected crash")
    self.sent += len(conversations)
    return self.backend.chat(conversations, params)


@pytest.mark.parametrize("crash_after", [3, 8])
def test_a_crashed_run_resumes_asking_each_question_once(tmp_path, crash_after):
  prompts, ours = _rating_files(tmp_path)
  config = judge.JudgeConfig("rating", prompts, (ours,), max_attempts=3, batch_size=2)
  out = str(tmp_path / "out")
  with FakeOpenAIServer(chat_fn=FakeJudge().chat) as server:
    crashing = CrashAfter(_backend(server), crash_after)
    with pytest.raises(RuntimeError, match="injected crash"):
      judge.run(config, crashing, out)
    written = len(_lines(tmp_path / "out" / "judge.jsonl"))
    assert 0 < written < 9 and 0 < server.served == crashing.sent <= crash_after
    report = judge.run(config, _backend(server), out)
  assert all(n == 1 for n in server.attempts.values())   # no request body was sent twice
  assert len(server.attempts) == server.served == 12     # 9 questions and 3 retries, as uninterrupted
  ids = [r["id"] for r in _lines(tmp_path / "out" / "judge.jsonl")]
  assert ids == sorted(set(ids)) and len(ids) == 9
  assert report["records_reused"] == written and report["records_new"] == 9 - written
  assert report["results"]["overall"]["counts"] == {"A": 3, "B": 3, "C": 1, "D": 1}


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
  env.pop("OPENAI_API_KEY", None)
  return env


def _judge_cli(*args, timeout=60):
  return subprocess.run([sys.executable, "-m", "instruct_jax.evals.judge", *map(str, args)], cwd=REPO, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_command_line_rating_and_one_line_errors(tmp_path):
  prompts, ours = _rating_files(tmp_path)
  with FakeOpenAIServer(chat_fn=FakeJudge().chat) as server:
    proc = _judge_cli("--mode", "rating", "--prompts", prompts, "--predictions", ours, "--group-by", "app",
                      "--backend", "openai", "--base-url", server.url, "--model", "fake-judge",
                      "--out", tmp_path / "out", "--no-progress")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "ours rated by openai:fake-judge" in proc.stdout and "app=notes" in proc.stdout
  assert "judge: 9 records" in proc.stdout and "report.png" in proc.stdout
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report["results"]["overall"]["counts"] == {"A": 3, "B": 3, "C": 1, "D": 1}
  # A prediction that does not answer its prompt's line is a one-line error naming the file and line.
  rows = _lines(ours)
  rows[2]["instruction"] = "Something else."
  bad = _write(tmp_path / "bad.jsonl", rows)
  for args, message in [
      (["--predictions", bad], "bad.jsonl:3: its instruction/input differ from those of"),
      (["--predictions", f"{ours},{ours}"], "--mode rating takes 1 predictions file"),
      (["--predictions", ours, "--group_by", "nope"], "prompts.jsonl:1: no field 'nope' (--group_by)"),
      (["--predictions", ours, "--backend", "model", "--workdir", tmp_path / "none"], "no such directory"),
      (["--predictions", ours, "--base_url", "http://127.0.0.1:9/v1"], "--model is required")]:
    proc = _judge_cli("--prompts", prompts, "--out", tmp_path / "err", *args)
    assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_help_lists_the_shared_flags():
  out = _judge_cli("--help").stdout
  for flag in ("--base_url", "--backend", "--workdir", "--out", "--group_by", "--mode", "--max_attempts"):
    assert flag in out, flag
  assert "--num_instructions" not in out


@pytest.mark.slow
def test_sigkill_and_restart_writes_each_record_once(tmp_path):
  many = _prompts(30)
  prompts = _write(tmp_path / "prompts.jsonl", many)
  a = _write(tmp_path / "a.jsonl", [{**p, "output": f"answer {'+' * (i % 4)}"} for i, p in enumerate(many)])
  b = _write(tmp_path / "b.jsonl", [{**p, "output": f"answer {'+' * (i % 3)}"} for i, p in enumerate(many)])
  with FakeOpenAIServer(chat_fn=FakeJudge().chat, delay_s=0.03) as server:
    def cmd(out):
      return [sys.executable, "-m", "instruct_jax.evals.judge", "--mode", "pairwise", "--prompts", prompts,
              "--predictions", f"{a},{b}", "--base_url", server.url, "--model", "fake-judge", "--out", out,
              "--batch_size", "2", "--concurrency", "2", "--noprogress"]
    ref = tmp_path / "ref"
    subprocess.run(cmd(ref), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    asked_by_ref = server.served
    crash = tmp_path / "crash"
    kills = 0
    for fraction in (0.3, 0.7):
      proc = subprocess.Popen(cmd(crash), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
      deadline = time.time() + 60
      cache = crash / "cache" / "requests.jsonl"
      while ((not cache.exists() or len(cache.read_text().splitlines()) < fraction * asked_by_ref)
             and proc.poll() is None and time.time() < deadline):
        time.sleep(0.005)
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        kills += 1
      proc.wait()
    assert kills == 2
    subprocess.run(cmd(crash), cwd=REPO, env=_env(), check=True, capture_output=True, timeout=120)
    asked_by_crash = server.served - asked_by_ref
  ids = [r["id"] for r in _lines(crash / "judge.jsonl")]
  assert len(ids) == len(set(ids)) == 30
  assert _lines(crash / "judge.jsonl") == _lines(ref / "judge.jsonl")
  ref_report = json.loads((ref / "report.json").read_text())
  crash_report = json.loads((crash / "report.json").read_text())
  assert crash_report["results"] == ref_report["results"] and crash_report["counts"] == ref_report["counts"]
  assert asked_by_ref <= asked_by_crash <= asked_by_ref + kills * 4   # at most one batch in flight per kill
