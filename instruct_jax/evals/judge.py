"""A language model as judge of open-ended outputs: Self-Instruct's A-D rating, and pairwise preference.

    # Rate one model's outputs on Self-Instruct's four levels, overall and per motivating app:
    python -m instruct_jax.evals.judge --mode rating --prompts user_oriented.jsonl \\
        --predictions ours.jsonl --group_by motivation_app --out /tmp/judge_rating \\
        --backend openai --base_url http://127.0.0.1:8000/v1 --model JUDGE
    # Model A against model B (LIMA / AlpacaEval style), every pair judged in both orders:
    python -m instruct_jax.evals.judge --mode pairwise --prompts P.jsonl \\
        --predictions ours.jsonl,baseline.jsonl --out /tmp/judge_pairwise --backend model --workdir W

Inputs. Prompts: JSONL records with "instruction", optional "input", and any other fields
(`--group_by FIELD` also reports per value of one of them); Self-Instruct's layout ({instruction, instances:
[{input, output}]}, its user-oriented evaluation set) is one item per instance with that instance's input, and a
SuperNI task file (.json) one per instance (`sources.instruction_records`), as `generate` reads them; a field that
looks like an input but is not read ("context", "question", ...) is an error naming it. Predictions: JSONL records
with "output", as `instruct_jax.generate --prompts_file P.jsonl --output X.jsonl` writes them. The join is by position:
the n-th prediction answers the n-th prompt, and it must repeat that prompt's "instruction" (and its
"input", where it has one; both compared without surrounding whitespace); a missing or different one,
or a different number of records, stops the run with the file and line at fault. A `.json` file is read as a
JSON list: AlpacaEval's evaluation set and the model outputs `generate --format alpaca_eval` writes. MT-Bench:
prompts from its question.jsonl ({question_id, turns}) and predictions from FastChat answer files
(`generate --mt_bench` writes them) are joined by question_id, one item per turn (see `_mt_bench_items`).

Verdicts. The judge (any backend of `instruct_jax.synthetic`: `--backend openai` or `--backend model`)
is asked to end with a line "Verdict: X" (rating: A, B, C or D; pairwise: 1, 2 or tie), and only such
whole lines are read: none, or several that disagree, make the answer unparsable. An unparsable
question is asked again, up to `--max_attempts` times in all, each retry with the next seed and a
temperature of at least `--retry_temperature` (so that neither the request cache nor greedy decoding
returns the same answer); then it is recorded as unparsable and counted, never guessed.

Pairwise. A pair is judged with A's output as response 1 (order "ab") and again as response 2 ("ba"),
which cancels the judge's preference for a position. Each order gives A a win, tie or loss, and the
two combine as a sum: win+win and win+tie are a win, loss+loss and loss+tie a loss, tie+tie and
win+loss a tie (orders that disagree say the judge followed the position, not the content). A pair
with an unparsable order is unparsable. Reported: win / tie / loss rates among judged pairs and the
win rate counting ties as half (AlpacaEval's), each with a percentile bootstrap interval from a seeded
generator, and how often the two orders agreed.

Runs. `--out` is a run directory as the synthetic methods keep one (`synthetic/runner.py`):
settings.json (the judged texts' hash, the judge and its prompts' version, decoding, retry policy; a
run with other settings is refused), judge.jsonl (one record per prompt, appended and flushed),
cache/requests.jsonl, .lock, report.json, and report.png (the bar chart). A killed run resumes:
prompts already in judge.jsonl are not asked again, answers in the request cache are not sent again,
and no record is written twice. Questions go out `--batch_size` prompts at a time and each batch's
answers are cached as it returns, so a kill loses at most one batch of answers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags, logging

from instruct_jax import errors
from instruct_jax.data import sources
from instruct_jax.data.sources import read_json
from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.lm.backends import Backend, BackendError, GenParams
from instruct_jax.synthetic.records import make_record, read_jsonl, text_field
from instruct_jax.synthetic.runner import ResumeError, RunDir, Tally, progress_bar

METHOD = "judge"
PROMPTS = os.path.join(os.path.dirname(__file__), "judge_prompts.yaml")
LEVELS = ("A", "B", "C", "D")
OUTCOMES = ("win", "tie", "loss")
ORDERS = ("ab", "ba")
_VERDICT = re.compile(r"^[ \t]*(?:\*\*)?verdict(?:\*\*)?[ \t]*:[ \t]*(?:\*\*)?[ \t]*(\w+)[ \t]*(?:\*\*)?"
                      r"[ \t]*\.?[ \t]*$", re.I | re.M)
_POINTS = {"win": 1, "tie": 0, "loss": -1}


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  mode: str  # "rating" or "pairwise"
  prompts: str
  predictions: tuple[str, ...]  # one file (rating) or two, A then B (pairwise)
  names: tuple[str, ...] = ()  # labels of the prediction files in reports (default: the file names)
  group_by: str | None = None
  max_attempts: int = 3
  retry_temperature: float = 0.7
  batch_size: int = 16
  generation: GenParams = GenParams(max_new_tokens=512, temperature=0.0)
  bootstrap_samples: int = 1000
  confidence: float = 0.95
  judge_prompts: str = PROMPTS

  def __post_init__(self):
    if self.mode not in ("rating", "pairwise"):
      raise errors.UserError(f"--mode must be rating or pairwise, got {self.mode!r}")
    want = 1 if self.mode == "rating" else 2
    if len(self.predictions) != want:
      raise errors.UserError(f"--mode {self.mode} takes {want} predictions file(s) (--predictions), got "
                             f"{len(self.predictions)}")
    if self.names and len(self.names) != want:
      raise errors.UserError(f"--names: give {want} name(s), one per predictions file")
    for name in ("max_attempts", "batch_size", "bootstrap_samples"):
      if getattr(self, name) < 1:
        raise errors.UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if not 0 < self.confidence < 1:
      raise errors.UserError(f"--confidence must be in (0, 1), got {self.confidence}")

  @property
  def labels(self) -> tuple[str, ...]:
    if self.names:
      return self.names
    stems = tuple(os.path.basename(p).removesuffix(".jsonl") for p in self.predictions)
    return stems if len(set(stems)) == len(stems) else ("A", "B")[:len(stems)]


@dataclasses.dataclass(frozen=True)
class Item:
  """One prompt and the output(s) to judge for it."""
  index: int
  instruction: str
  input: str
  outputs: tuple[str, ...]
  group: str | None
  parent_id: str | None

  @property
  def id(self) -> str:
    return f"judge-{self.index:06d}"


# --- inputs ---

def _records(path: str) -> list[tuple[str, dict[str, Any]]]:
  """(where, record) of a JSONL file, or of a JSON list (AlpacaEval's evaluation set and model outputs)."""
  if not os.path.isfile(path):
    raise errors.UserError(f"{path}: no such file")
  try:
    if path.endswith(".json"):
      return [(f"{path}: record {i}", obj) for i, obj in enumerate(read_json(path))]
    return [(f"{path}:{lineno}", obj) for lineno, obj in read_jsonl(path)]
  except ValueError as e:  # bad JSON or bytes that are not UTF-8, named by file and line
    raise errors.UserError(str(e)) from None


def _prompt_records(path: str) -> list[tuple[str, dict[str, Any]]]:
  """The prompts file's records, exactly one per published example: a Self-Instruct record one per instance, a
  SuperNI task file (.json) one per instance (its Definition the instruction); MT-Bench questions as they are."""
  try:
    if path.endswith(".json") and os.path.isfile(path):
      data = sources.read_json_data(path)
      if sources.is_superni_task(data):
        return sources.superni_records(data, path)
    records = _records(path)
    if _is_mt_bench(records):
      return records
    return [x for where, obj in records for x in sources.expand_instances(obj, where)]
  except sources.DataError as e:
    raise errors.UserError(str(e)) from None


def _is_mt_bench(records: Sequence[tuple[str, dict[str, Any]]]) -> bool:
  return bool(records) and all("question_id" in obj and "turns" in obj for _, obj in records)


def _mt_bench_items(config: "JudgeConfig", questions: Sequence[tuple[str, dict[str, Any]]]) -> list[Item]:
  """MT-Bench: one item per question and turn, joined to FastChat answer files by question_id. A later turn is judged
  as FastChat judges it, with the conversation before it: its question is the instruction, the earlier turns (each
  question and the first predictions file's answer to it) its input. Grouped by turn unless --group_by names a
  field."""
  answers = []
  for path in config.predictions:
    by_id = {}
    for where, obj in _records(path):
      try:
        by_id[obj["question_id"]] = [str(t) for t in obj["choices"][0]["turns"]]
      except (KeyError, IndexError, TypeError):
        raise errors.UserError(f"{where}: not an MT-Bench answer ({{question_id, choices: [{{turns}}]}})") from None
    answers.append((path, by_id))
  items = []
  for where, q in questions:
    turns = q["turns"]
    if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
      raise errors.UserError(f"{where}: 'turns' must be a list of strings")
    replies = []
    for path, by_id in answers:
      if q["question_id"] not in by_id or len(by_id[q["question_id"]]) < len(turns):
        raise errors.UserError(f"{path}: no answer to every turn of question {q['question_id']!r} ({where})")
      replies.append(by_id[q["question_id"]])
    for k, turn in enumerate(turns):
      earlier = "\n\n".join(f"User: {turns[j]}\n\nAssistant: {replies[0][j]}" for j in range(k))
      group = f"turn {k + 1}" if not config.group_by else str(q.get(config.group_by))
      items.append(Item(len(items), turn, earlier, tuple(r[k] for r in replies), group, str(q["question_id"])))
  return items


def _text(obj: Mapping[str, Any], field: str, where: str, required: bool = True) -> str:
  try:
    return text_field(obj, field, where, required=required)
  except ValueError as e:
    raise errors.UserError(str(e)) from None


def load_items(config: JudgeConfig) -> list[Item]:
  """Prompts joined to their predictions (see the module docstring); mismatches are UserErrors."""
  prompts = _prompt_records(config.prompts)
  if not prompts:
    raise errors.UserError(f"{config.prompts}: no prompts")
  if _is_mt_bench(prompts):
    return _mt_bench_items(config, prompts)
  preds = []
  for path in config.predictions:
    rows = _records(path)
    if len(rows) != len(prompts):
      raise errors.UserError(f"{path} has {len(rows)} records but {config.prompts} has {len(prompts)}: the n-th "
                             "prediction answers the n-th prompt, so they must have as many")
    preds.append(rows)
  items = []
  for i, (where, obj) in enumerate(prompts):
    instruction, inp = _text(obj, "instruction", where), _text(obj, "input", where, required=False)
    outputs = []
    for rows in preds:
      pwhere, pred = rows[i]
      if "instruction" not in pred:
        raise errors.UserError(f"{pwhere}: no 'instruction' field; predictions are joined to prompts line by line "
                               "and must repeat the prompt's instruction (instruct_jax.generate writes it)")
      if (_text(pred, "instruction", pwhere).strip() != instruction.strip()
          or _text(pred, "input", pwhere, required=False).strip() != inp.strip()):
        raise errors.UserError(f"{pwhere}: its instruction/input differ from those of {where}; predictions are "
                               "joined to prompts line by line (same order, same count)")
      outputs.append(_text(pred, "output", pwhere))
    group = None
    if config.group_by:
      if config.group_by not in obj:
        raise errors.UserError(f"{where}: no field {config.group_by!r} (--group_by)")
      value = obj[config.group_by]
      group = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    parent = obj.get("id")
    items.append(Item(i, instruction, inp, tuple(outputs), group, parent if isinstance(parent, str) else None))
  return items


def content_hash(items: Sequence[Item]) -> str:
  """SHA-256 of what is judged (instructions, inputs, outputs), not of the files' other fields."""
  blob = json.dumps([[it.instruction, it.input, list(it.outputs)] for it in items], ensure_ascii=False)
  return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# --- questions and verdicts ---

def conversation(p: dict[str, Any], mode: str, item: Item, order: str | None) -> list[dict[str, str]]:
  """The judge's chat request for one item (pairwise: in `order`, "ab" = A's output as response 1)."""
  section = p[mode]
  block = prompt_files.fill(section["input_block"], input=item.input) if item.input.strip() else ""
  if mode == "rating":
    user = prompt_files.fill(section["template"], instruction=item.instruction, input_block=block,
                             output=item.outputs[0])
  else:
    first, second = item.outputs if order == "ab" else item.outputs[::-1]
    user = prompt_files.fill(section["template"], instruction=item.instruction, input_block=block,
                             first=first, second=second)
  return [{"role": "system", "content": section["system"]}, {"role": "user", "content": user}]


def parse_verdict(text: str, mode: str) -> str | None:
  """The value of the answer's "Verdict: X" lines that name a choice (A-D; or "1", "2", "tie"), or None if
  there is none or two of them disagree (a line such as "Verdict: X" repeating the format is ignored).

  >>> parse_verdict("Accurate and complete.\\n**Verdict: A**", "rating")
  'A'
  """
  choices = {c.lower(): c for c in (LEVELS if mode == "rating" else ("1", "2", "tie"))}
  values = {m.group(1).lower() for m in _VERDICT.finditer(text)} & set(choices)  # "Verdict: X" echoes drop out
  if len(values) != 1:
    return None
  return choices[values.pop()]


def outcome_for_a(verdict: str, order: str) -> str:
  """A pairwise verdict ("1", "2", "tie") read from A's side in `order`."""
  if verdict == "tie":
    return "tie"
  return "win" if (verdict == "1") == (order == "ab") else "loss"


def combine(first: str | None, second: str | None) -> str | None:
  """A's outcome over both orders (see the module docstring); None if either is unparsable."""
  if first is None or second is None:
    return None
  points = _POINTS[first] + _POINTS[second]
  return "win" if points > 0 else "loss" if points < 0 else "tie"


def attempt_params(config: JudgeConfig, attempt: int) -> GenParams:
  g = config.generation
  if attempt == 0:
    return g
  return dataclasses.replace(g, seed=g.seed + attempt, temperature=max(g.temperature, config.retry_temperature))


def judge_batch(p, lm: Backend, config: JudgeConfig, items: Sequence[Item]) -> list[dict[str, Any]]:
  """Asks every question of `items` (retrying unparsable ones) and returns their records."""
  orders = (None,) if config.mode == "rating" else ORDERS
  questions = [(i, o) for i in range(len(items)) for o in orders]
  answers: dict[tuple, list[dict[str, Any]]] = {q: [] for q in questions}
  verdicts: dict[tuple, str | None] = dict.fromkeys(questions)
  pending = questions
  for attempt in range(config.max_attempts):
    if not pending:
      break
    completions = lm.chat([conversation(p, config.mode, items[i], o) for i, o in pending],
                          attempt_params(config, attempt))
    for q, c in zip(pending, completions):
      answers[q].append({"text": c.text, "finish_reason": c.finish_reason})
      verdicts[q] = parse_verdict(c.text, config.mode)
    pending = [q for q in pending if verdicts[q] is None]
  records = []
  for i, item in enumerate(items):
    judgements = [({"order": o} if o else {}) | {"verdict": verdicts[(i, o)], "answers": answers[(i, o)]}
                  for o in orders]
    extra: dict[str, Any] = {"index": item.index, "judgements": judgements}
    if config.mode == "rating":
      extra["verdict"] = verdicts[(i, None)]
    else:
      sides = [None if verdicts[(i, o)] is None else outcome_for_a(verdicts[(i, o)], o) for o in ORDERS]
      extra |= {"output_b": item.outputs[1], "outcome": combine(*sides)}
      for j, side in zip(judgements, sides):
        j["outcome_for_a"] = side
    record = make_record(item.id, instruction=item.instruction, input=item.input, output=item.outputs[0],
                         provenance={"method": METHOD, "round": 0, "parent_id": item.parent_id,
                                     "backend": lm.kind, "model": lm.model, "prompt_version": p["version"],
                                     "mode": config.mode})
    records.append(record | extra)
  return records


# --- statistics ---

def bootstrap_ci(labels: Sequence[str], categories: Sequence[str], *, samples: int = 1000, seed: int = 0,
                 level: float = 0.95, scores: Mapping[str, Mapping[str, float]] | None = None
                 ) -> dict[str, tuple[float, float]]:
  """Percentile bootstrap intervals of each category's share among `labels`, and of each named score
  (the mean of {category: value} over the labels, e.g. win 1, tie 0.5, loss 0).

  Resampling n labels with replacement is drawing their category counts from a multinomial with the
  observed shares, which is what is done, `samples` times from a generator seeded with `seed`.
  """
  if not labels:
    return {}
  counts = np.array([sum(x == c for x in labels) for c in categories], np.float64)
  draws = np.random.default_rng(seed).multinomial(len(labels), counts / counts.sum(), size=samples)
  shares = draws / len(labels)
  columns = {c: shares[:, j] for j, c in enumerate(categories)}
  for name, values in (scores or {}).items():
    columns[name] = shares @ np.array([values.get(c, 0.0) for c in categories])
  tail = (1 - level) / 2
  return {k: (round(float(np.quantile(v, tail)), 6), round(float(np.quantile(v, 1 - tail)), 6))
          for k, v in columns.items()}


def group_stats(records: Sequence[Mapping[str, Any]], config: JudgeConfig, seed: int) -> dict[str, Any]:
  """Counts, shares among judged records, and bootstrap intervals for one group of records."""
  rating = config.mode == "rating"
  cats = LEVELS if rating else OUTCOMES
  labels = [r["verdict"] if rating else r["outcome"] for r in records]
  judged = [x for x in labels if x is not None]
  counts = {c: judged.count(c) for c in cats}
  stats: dict[str, Any] = {"n": len(labels), "judged": len(judged), "unparsable": len(labels) - len(judged),
                           "counts": counts,
                           "shares": {c: round(counts[c] / len(judged), 6) if judged else None for c in cats}}
  scores = None if rating else {"win_rate_ties_half": {"win": 1.0, "tie": 0.5}}
  if not rating:
    stats["win_rate_ties_half"] = (round((counts["win"] + 0.5 * counts["tie"]) / len(judged), 6)
                                   if judged else None)
    both = [r for r in records if r["outcome"] is not None]
    agree = sum(r["judgements"][0]["outcome_for_a"] == r["judgements"][1]["outcome_for_a"] for r in both)
    stats["orders_agree"] = round(agree / len(both), 6) if both else None
  ci = bootstrap_ci(judged, cats, samples=config.bootstrap_samples, seed=seed, level=config.confidence, scores=scores)
  stats["ci"] = {k: list(v) for k, v in ci.items()}  # as JSON has them
  return stats


def summarize(records: Sequence[Mapping[str, Any]], items: Sequence[Item], config: JudgeConfig,
              seed: int) -> dict[str, Any]:
  """Statistics overall and per --group_by value (groups in order of first appearance)."""
  groups: dict[str, list[Mapping[str, Any]]] = {}
  if config.group_by:
    for item, record in zip(items, records):
      groups.setdefault(item.group, []).append(record)
  return {"group_by": config.group_by, "overall": group_stats(records, config, seed),
          "groups": {g: group_stats(rs, config, seed + zlib.crc32(g.encode("utf-8"))) for g, rs in groups.items()}}


def tally_of(records: Sequence[Mapping[str, Any]], mode: str) -> Tally:
  """verdicts: per outcome; questions: parsed at once, after retries, or unparsable; answers: every
  answer read, parsed or not; orders (pairwise): whether the two orders agreed."""
  tally = Tally()
  for r in records:
    tally.add("verdicts", (r["verdict"] if mode == "rating" else r["outcome"]) or "unparsable")
    for j in r["judgements"]:
      parsed = j["verdict"] is not None
      tally.add("questions", "unparsable" if not parsed else "parsed" if len(j["answers"]) == 1 else
                "parsed_after_retry")
      tally.add("answers", "parsed", int(parsed))
      tally.add("answers", "unparsable", len(j["answers"]) - int(parsed))
    if mode == "pairwise" and r["outcome"] is not None:
      sides = [j["outcome_for_a"] for j in r["judgements"]]
      tally.add("orders", "agree" if sides[0] == sides[1] else "disagree")
  return tally


# --- reports ---

def format_table(results: Mapping[str, Any], config: JudgeConfig, judge: str) -> str:
  rating = config.mode == "rating"
  cats = LEVELS if rating else OUTCOMES + ("win_rate_ties_half",)
  pct = int(round(100 * config.confidence))
  head = (f"{config.labels[0]} rated by {judge} (Self-Instruct scale)" if rating else
          f"{config.labels[0]} (A) vs {config.labels[1]} (B), judged by {judge} in both orders")
  lines = [f"{head}; % of judged outputs [{pct}% bootstrap interval]"]
  names = {"win_rate_ties_half": "win, ties half"}
  cols = "".join(f"{names.get(c, c):>22}" for c in cats) + ("" if rating else f"{'orders agree':>14}")
  lines.append(f"{'group':<24}{'n':>6}{'unparsable':>12}{cols}")
  rows = [("all", results["overall"])] + list(results["groups"].items())
  for name, s in rows:
    cells = ""
    for c in cats:
      value = s["shares"][c] if c in s["shares"] else s.get(c)
      lo, hi = s["ci"].get(c, (None, None))
      cells += (f"{100 * value:6.1f} [{100 * lo:5.1f},{100 * hi:5.1f}]" if value is not None else "-").rjust(22)
    if not rating:
      cells += (f"{100 * s['orders_agree']:.1f}" if s["orders_agree"] is not None else "-").rjust(14)
    label = f"{results['group_by']}={name}" if name != "all" else name
    lines.append(f"{label[:23]:<24}{s['n']:>6}{s['unparsable']:>12}{cells}")
  return "\n".join(lines)


def write_chart(results: Mapping[str, Any], config: JudgeConfig, path: str, title: str) -> None:
  """Stacked horizontal bars of the shares (pairwise: with the win share's interval), one bar per group."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  (slow import; only here)
  rows = [("all", results["overall"])] + [(f"{results['group_by']}={g}", s) for g, s in results["groups"].items()]
  cats = LEVELS if config.mode == "rating" else OUTCOMES
  colors = (["#2a9d8f", "#8ab17d", "#e9c46a", "#e76f51"] if config.mode == "rating" else
            ["#2a9d8f", "#bdbdbd", "#e76f51"])
  legend = (["A: valid", "B: minor flaws", "C: major errors", "D: invalid"] if config.mode == "rating" else
            [f"{config.labels[0]} wins", "tie", f"{config.labels[1]} wins"])
  fig = Figure(figsize=(8, 1.6 + 0.4 * len(rows)))
  ax = fig.subplots()
  y = np.arange(len(rows))
  left = np.zeros(len(rows))
  for c, color, label in zip(cats, colors, legend):
    widths = np.array([s["shares"][c] or 0.0 for _, s in rows])
    ax.barh(y, widths, left=left, color=color, label=label)
    left += widths
  if config.mode == "pairwise":
    win = np.array([s["shares"]["win"] or 0.0 for _, s in rows])
    lo = np.array([s["ci"].get("win", (w, w))[0] for w, (_, s) in zip(win, rows)])
    hi = np.array([s["ci"].get("win", (w, w))[1] for w, (_, s) in zip(win, rows)])
    ax.errorbar(win, y, xerr=[win - lo, hi - win], fmt="none", ecolor="black", capsize=3)
  ax.set_yticks(y, [f"{name} (n={s['judged']})" for name, s in rows])
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("share of judged outputs")
  ax.set_title(title, fontsize=10)
  ax.legend(ncol=len(cats), loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / (len(rows) + 3)), frameon=False)
  fig.savefig(path, dpi=120, bbox_inches="tight")


# --- the run ---

def run(config: JudgeConfig, backend: Backend, out_dir: str, *, progress: bool = False) -> dict[str, Any]:
  """Judges (or resumes judging) into `out_dir`; returns the report (also written to report.json)."""
  p = prompt_files.load(config.judge_prompts)
  items = load_items(config)
  settings = {"mode": config.mode, "items": len(items), "inputs_sha256": content_hash(items),
              "backend": backend.kind, "model": backend.model, "prompt_version": p["version"],
              "generation": config.generation.to_json(), "max_attempts": config.max_attempts,
              "retry_temperature": config.retry_temperature}
  with RunDir(out_dir, METHOD, settings, growable=()) as rd:
    lm = rd.cached(backend)
    todo = [it for it in items if it.id not in rd.output]
    bar = progress_bar(len(todo), METHOD, progress)
    for start in range(0, len(todo), config.batch_size):
      chunk = todo[start:start + config.batch_size]
      for record in judge_batch(p, lm, config, chunk):
        rd.emit(record)
      bar.update(len(chunk))
    bar.close()
    records = [rd.output.get(it.id) for it in items]
    results = summarize(records, items, config, config.generation.seed)
    judge = f"{backend.kind}:{backend.model}"
    chart = os.path.join(out_dir, "report.png")
    title = (f"{config.labels[0]}: ratings by {judge}" if config.mode == "rating" else
             f"{config.labels[0]} vs {config.labels[1]}, judged by {judge} in both orders")
    write_chart(results, config, chart, title)
    return rd.finish(tally_of(records, config.mode), mode=config.mode, names=list(config.labels),
                     records_reused=len(items) - len(todo), results=results, chart=chart,
                     table=format_table(results, config, judge))


# --- command line ---

def define_flags() -> None:
  """The command's flags: defined only when run as a command, so importing this module defines none of its
  own (the shared backend and run flags come from synthetic/cli.py, and are made key flags for --help)."""
  for name in cli.BACKEND_FLAGS + ("out", "seed", "progress"):
    flags.declare_key_flag(name)
  flags.DEFINE_enum("mode", "rating", ["rating", "pairwise"],
                    "rating: grade one model's outputs A-D; pairwise: model A against model B.")
  flags.DEFINE_string("prompts", None, "JSONL prompts: instruction, optional input, any other fields.")
  flags.DEFINE_list("predictions", None, "Predictions JSONL (instruction, output): one file for rating; two, "
                    "A then B, for pairwise.")
  flags.DEFINE_list("names", None, "Names of the predictions in reports (default: their file names).")
  flags.DEFINE_string("group_by", None, "Also report per value of this prompt field.")
  flags.DEFINE_integer("max_attempts", 3, "Times a question is asked before its verdict counts as unparsable.")
  flags.DEFINE_float("retry_temperature", 0.7, "Lowest temperature of a retried question.")
  flags.DEFINE_integer("max_new_tokens", 512, "Most tokens of a judge's answer.")
  flags.DEFINE_float("temperature", 0.0, "Temperature of first attempts (0: greedy).")
  flags.DEFINE_integer("batch_size", 16, "Prompts whose questions are sent (and cached) together.")
  flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples for the intervals.")
  flags.DEFINE_float("confidence", 0.95, "Coverage of the bootstrap intervals.")


def _main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    generation = GenParams(max_new_tokens=cli.require_positive(f.max_new_tokens, "max_new_tokens"),
                           temperature=f.temperature, seed=f.seed)
  except ValueError as e:  # a negative --temperature
    raise errors.UserError(str(e)) from None
  config = JudgeConfig(f.mode, cli.require(f.prompts, "prompts"), tuple(cli.require(f.predictions, "predictions")),
                       names=tuple(f.names or ()), group_by=f.group_by, max_attempts=f.max_attempts,
                       retry_temperature=f.retry_temperature, batch_size=f.batch_size, generation=generation,
                       bootstrap_samples=f.bootstrap_samples, confidence=f.confidence)
  out = cli.require(f.out, "out")
  load_items(config)  # check the inputs before a model is loaded or a server is asked anything
  if not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    report = run(config, cli.build_backend(), out, progress=f.progress)
  except (ResumeError, BackendError) as e:
    raise errors.UserError(str(e)) from None
  cli.print_report(report)
  print(report["table"])
  print(f"wrote {os.path.join(out, 'report.json')} and {report['chart']}")


if __name__ == "__main__":
  define_flags()
  cli.main(_main)
