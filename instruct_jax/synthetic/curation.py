"""LIMA-style curation: quality filters, then a diverse selection across sources up to a budget.

    python -m instruct_jax.synthetic.curation --inputs stack=se.jsonl,wikihow=wh.jsonl \
        --out /tmp/curated --num-instructions 1000 [--lm-rating --backend openai \
        --base-url http://127.0.0.1:8000/v1 --model NAME]

`--num-instructions` is the budget: how many records to select. Each input is a JSONL file of
records with "instruction" and "output" (optional "input", "system", "id", numeric "score" such as
community votes); `name=path` names the source, a bare path is named after its file.

Quality filters, in order: empty instruction or output; links stripped from the output (markdown
links keep their words, bare URLs go); output length outside [min_output_chars, max_output_chars]
(LIMA: 1,200-4,096 characters); first person in the output ("I", "my", "me"...); references to
other answers or edits; an unbalanced code fence; a line repeated more than 3 times; a source score
below `min_source_score` (when set; a missing score then fails too).

Diversity: each source's surviving records are shuffled (seeded) and sources take turns, one
record each, so the budget is split evenly and a small source's unused share goes to the others.
A record whose instruction is a near-duplicate (ROUGE-L F > 0.7) of one already selected is
skipped. With `lm_rating`, the backend grades each reached record with a 1-5 rubric ending in
"Score: N" (prompts/curation.yaml), and records below `min_lm_score` or without a readable score are
skipped. Selection order is the output order, so a larger budget extends a run.
"""
from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

from absl import flags

from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.synthetic import filters
from instruct_jax.lm.backends import Backend, GenParams
from instruct_jax.synthetic.parsers import parse_score
from instruct_jax.synthetic.records import instruction_triples, make_record, read_jsonl
from instruct_jax.synthetic.records import text_field
from instruct_jax.synthetic.rouge_novelty import NoveltyIndex
from instruct_jax.synthetic.runner import RunDir, Tally, progress_bar

METHOD = "curation"


@dataclasses.dataclass(frozen=True)
class CurationConfig:
  inputs: tuple[str, ...]
  num_instructions: int
  min_output_chars: int = 1200
  max_output_chars: int = 4096
  reject_first_person: bool = True
  strip_links: bool = True
  min_source_score: float | None = None
  dedup_threshold: float = 0.7
  lm_rating: bool = False
  min_lm_score: int = 4
  chunk_size: int = 32
  seed: int = 0
  rating: GenParams = GenParams(max_new_tokens=512, temperature=0.0)
  prompts: str = METHOD


@dataclasses.dataclass(frozen=True)
class Candidate:
  source: str
  ref: str
  instruction: str
  input: str
  output: str
  system: str
  score: float | None


def parse_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
  """["name=path" | "path", ...] -> [(name, path)]; names must be unique."""
  out = []
  for item in inputs:
    name, sep, path = item.partition("=")
    if not sep:
      path, name = item, os.path.splitext(os.path.basename(item))[0]
    if not name or not path:
      raise ValueError(f"--inputs entry {item!r}: expected name=path or path")
    if name in dict(out):
      raise ValueError(f"--inputs: source name {name!r} given twice")
    out.append((name, path))
  if not out:
    raise ValueError("--inputs: no input files")
  return out


def load_source(name: str, path: str) -> list[Candidate]:
  """Alpaca-style records (or 175-task-format tasks, one candidate per instance)."""
  out = []
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    score = obj.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
      raise ValueError(f"{where}: field 'score' must be a number")
    system = text_field(obj, "system", where, required=False)
    triples = instruction_triples(obj, where)
    for j, (instruction, inp, output) in enumerate(triples):
      ref = f"{name}:{obj.get('id', lineno)}" + (f"/{j}" if len(triples) > 1 else "")
      out.append(Candidate(name, ref, instruction, inp, output, system, score))
  return out


def quality_reason(c: Candidate, config: CurationConfig, phrases: Sequence[str]) -> str | None:
  """Why `c` fails the quality filters (its output already link-stripped), or None."""
  if not c.instruction.strip():
    return "empty_instruction"
  if not c.output.strip():
    return "empty_output"
  if len(c.output) < config.min_output_chars:
    return "output_too_short"
  if len(c.output) > config.max_output_chars:
    return "output_too_long"
  if config.reject_first_person and filters.is_first_person(c.output):
    return "first_person"
  if filters.refers_to_other_content(c.output, phrases):
    return "refers_to_other_content"
  if filters.has_unbalanced_code_fence(c.output):
    return "unbalanced_code_fence"
  if filters.is_repetitive(c.output):
    return "repetitive"
  if config.min_source_score is not None:
    if c.score is None:
      return "missing_source_score"
    if c.score < config.min_source_score:
      return "low_source_score"
  return None


def round_robin(per_source: Sequence[list[Candidate]]) -> Iterator[Candidate]:
  """One from each source in turn; exhausted sources drop out."""
  queues = [list(reversed(q)) for q in per_source]
  while any(queues):
    for q in queues:
      if q:
        yield q.pop()


def run(config: CurationConfig, backend: Backend | None, out_dir: str, *,
        progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or extends) curation into `out_dir`; returns the report."""
  if config.lm_rating and backend is None:
    raise ValueError("lm_rating needs a backend")
  p = prompt_files.load(config.prompts)
  phrases = p["reference_phrases"]
  kind, model = (backend.kind, backend.model) if config.lm_rating else ("none", "none")
  settings = dataclasses.asdict(config) | {"backend": kind, "model": model,
                                           "prompt_version": p["version"]}
  with RunDir(out_dir, METHOD, settings) as rd:
    lm = rd.cached(backend) if config.lm_rating else None
    tally = Tally()
    per_source = []
    for name, path in parse_inputs(config.inputs):
      passing = []
      for c in load_source(name, path):
        if config.strip_links:
          c = dataclasses.replace(c, output=filters.strip_links(c.output))
        reason = quality_reason(c, config, phrases)
        tally.add(f"quality_{name}", reason or "kept")
        if reason is None:
          passing.append(c)
      random.Random(f"{METHOD}:{config.seed}:{name}").shuffle(passing)
      per_source.append(passing)
    index = NoveltyIndex(config.dedup_threshold)
    stream = round_robin(per_source)
    bar = progress_bar(config.num_instructions, METHOD, progress)
    selected = 0
    while selected < config.num_instructions:
      chunk = [c for _, c in zip(range(config.chunk_size), stream)]
      if not chunk:
        break
      scores: list[int | None] = [None] * len(chunk)
      if lm is not None:
        answers = lm.chat([[{"role": "user", "content": prompt_files.fill(
            p["rating"]["template"], instruction=_prompt_text(c), output=c.output)}] for c in chunk],
                          config.rating)
        scores = [parse_score(a.text) for a in answers]
      for c, score in zip(chunk, scores):
        if selected >= config.num_instructions:
          break
        reason = None
        if lm is not None:
          reason = ("unparsable_rating" if score is None else
                    "below_min_lm_score" if score < config.min_lm_score else None)
        if reason is None and not index.add_if_novel(_prompt_text(c)).novel:
          reason = "near_duplicate"
        tally.add("selection", reason or "kept")
        if reason:
          continue
        rd.emit(make_record(
            f"cur-{selected:06d}", instruction=c.instruction, input=c.input, output=c.output,
            system=c.system,
            provenance={"method": METHOD, "round": 0, "parent_id": c.ref, "backend": kind,
                        "model": model, "prompt_version": p["version"], "source": c.source,
                        "source_score": c.score, "lm_score": score}))
        selected += 1
        bar.update(1)
    bar.close()
    return rd.finish(tally, selected=selected, stopped_early=selected < config.num_instructions)


def _prompt_text(c: Candidate) -> str:
  return f"{c.instruction}\n\n{c.input}" if c.input.strip() else c.instruction


flags.adopt_module_key_flags(cli)  # --help lists the shared flags (backend, output, ...) too
_INPUTS = flags.DEFINE_list("inputs", None, "Comma-separated name=path (or path) JSONL sources.")
_MIN_CHARS = flags.DEFINE_integer("min_output_chars", 1200, "Shortest output kept (characters).")
_MAX_CHARS = flags.DEFINE_integer("max_output_chars", 4096, "Longest output kept (characters).")
_ALLOW_FIRST_PERSON = flags.DEFINE_bool("allow_first_person", False,
                                        "Keep outputs written in the first person.")
_MIN_SOURCE_SCORE = flags.DEFINE_float("min_source_score", None,
                                       "Drop records whose \"score\" is below this.")
_LM_RATING = flags.DEFINE_bool("lm_rating", False, "Grade records with the backend (1-5).")
_MIN_LM_SCORE = flags.DEFINE_integer("min_lm_score", 4, "Lowest LM grade kept.")


def _main(argv: list[str]) -> None:
  del argv
  config = CurationConfig(
      inputs=tuple(cli.require(_INPUTS.value, "inputs")),
      num_instructions=cli.require_positive(cli.NUM_INSTRUCTIONS.value, "num_instructions"),
      min_output_chars=_MIN_CHARS.value, max_output_chars=_MAX_CHARS.value,
      reject_first_person=not _ALLOW_FIRST_PERSON.value, min_source_score=_MIN_SOURCE_SCORE.value,
      lm_rating=_LM_RATING.value, min_lm_score=_MIN_LM_SCORE.value, seed=cli.SEED.value)
  backend = cli.build_backend() if config.lm_rating else None
  report = run(config, backend, cli.require(cli.OUT.value, "out"), progress=cli.PROGRESS.value)
  cli.print_report(report)


if __name__ == "__main__":
  cli.main(_main)
