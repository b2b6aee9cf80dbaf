"""Evol-Instruct: rewrite instructions into harder or rarer ones over several rounds.

    python -m instruct_jax.synthetic.evol_instruct --instructions seeds.jsonl \
        --backend openai --base-url http://127.0.0.1:8000/v1 --model NAME \
        --out /tmp/evol --num-instructions 500 --rounds 4

`--num-instructions` counts seed instructions, taken in file order (each line needs "instruction";
an "input" string, or the first of "instances" in the 175-task format, is appended to it). Each
seed starts a lineage. In every round the lineage's current instruction gets one operator drawn
uniformly: one of the five in-depth rewrites (add constraints, deepening, concretizing, more
reasoning steps, complicate the input) or the in-breadth mutation (a new, rarer task of the same
domain). The evolved instruction is answered by the same model, and the evolution fails when
(eliminator): (1) the model judges it equal to the original (no information gain; an unparsable
judgement also fails), (2) the response says "sorry" in under 80 words, (3) the response is only
punctuation and stop words, or (4) the instruction copies the rewriting prompt's marker words; an
empty or length-cut instruction or response fails too. A failed lineage keeps its instruction and
retries it next round; a successful one emits a record (id `evol-<seed>-r<round>`, parent_id the
record or seed it came from) and continues from the new instruction. Lineages run in chunks of
`chunk_size`; a chunk's records are written together, ordered by seed then round.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

from absl import flags

from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.lm.backends import Backend, GenParams
from instruct_jax.synthetic.filters import copies_markers, is_only_stop_words, is_sorry_and_short
from instruct_jax.synthetic.parsers import clean_text, parse_equal, squash
from instruct_jax.synthetic.records import make_record, read_jsonl, text_field
from instruct_jax.synthetic.runner import RunDir, Tally, progress_bar

METHOD = "evol_instruct"
IN_DEPTH = ("add_constraints", "deepening", "concretizing", "increase_reasoning",
            "complicate_input")
IN_BREADTH = "in_breadth"


@dataclasses.dataclass(frozen=True)
class EvolConfig:
  instructions: str
  num_instructions: int
  rounds: int = 4
  chunk_size: int = 16
  operators: tuple[str, ...] = IN_DEPTH + (IN_BREADTH,)
  sorry_max_words: int = 80
  seed: int = 0
  evolve: GenParams = GenParams(max_new_tokens=1024, temperature=1.0, top_p=0.95)
  respond: GenParams = GenParams(max_new_tokens=2048, temperature=0.7, top_p=0.95)
  judge: GenParams = GenParams(max_new_tokens=8, temperature=0.0)
  prompts: str = METHOD


def load_instructions(path: str) -> list[tuple[str, str]]:
  """(id, instruction text) per line; "input" (or the first instance's input) is appended."""
  out = []
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    text = text_field(obj, "instruction", where).strip()
    extra = text_field(obj, "input", where, required=False)
    instances = obj.get("instances")
    if not extra and isinstance(instances, list) and instances and isinstance(instances[0], dict):
      extra = text_field(instances[0], "input", f"{where} instance 0", required=False)
    if not text:
      raise ValueError(f"{where}: field 'instruction' is empty")
    out.append((str(obj.get("id", f"line{lineno}")), f"{text}\n\n{extra.strip()}" if extra.strip()
                else text))
  if not out:
    raise ValueError(f"{path}: no instructions")
  return out


def evolve_prompt(p: dict[str, Any], operator: str, instruction: str) -> str:
  if operator == IN_BREADTH:
    return prompt_files.fill(p["in_breadth"]["template"], instruction=instruction)
  ops = p["in_depth"]["operators"]
  if operator not in ops:
    raise ValueError(f"{p['_path']}: no in-depth operator {operator!r} (have {sorted(ops)})")
  return prompt_files.fill(p["in_depth"]["template"], operator=ops[operator],
                           instruction=instruction)


def _user(text: str) -> list[dict[str, str]]:
  return [{"role": "user", "content": text}]


def eliminate(original: str, evolved: str, response: str, response_cut: bool,
              judged_equal: bool | None, sorry_max_words: int = 80) -> str | None:
  """Why an evolution fails after it was answered and judged (rules 1-3), or None if it passes.

  Rule 4 (copied marker words) and empty or cut instructions are checked before answering."""
  if judged_equal is None:
    return "judge_unparsable"
  if judged_equal or squash(original) == squash(evolved):
    return "no_information_gain"
  if response_cut:
    return "response_cut_by_token_limit"
  if is_sorry_and_short(response, sorry_max_words):
    return "sorry_short_response"
  if is_only_stop_words(response):
    return "trivial_response"
  return None


def _evolve_chunk(p, lm, config, chunk, start, tally) -> list[dict[str, Any]]:
  """Runs all rounds for the lineages `chunk` (global indices from `start`); returns records."""
  current = [text for _, text in chunk]
  parents = [seed_id for seed_id, _ in chunk]
  records = []
  markers = p["marker_words"]
  for rnd in range(1, config.rounds + 1):
    ops = [random.Random(f"{METHOD}:{config.seed}:{start + i}:{rnd}").choice(config.operators)
           for i in range(len(chunk))]
    answers = lm.chat([_user(evolve_prompt(p, op, cur)) for op, cur in zip(ops, current)],
                      config.evolve)
    alive = []
    for i, ans in enumerate(answers):
      evolved = clean_text(ans.text)
      reason = None
      if ans.truncated:
        reason = "instruction_cut_by_token_limit"
      elif not evolved:
        reason = "empty_instruction"
      elif copies_markers(evolved, markers):
        reason = "copied_prompt_markers"
      elif squash(evolved) == squash(current[i]):
        reason = "no_information_gain"
      if reason:
        tally.add("evolutions", reason)
        continue
      alive.append((i, evolved))
    if not alive:
      continue
    responses = lm.chat([_user(e) for _, e in alive], config.respond)
    judge = p["judge"]["template"]
    verdicts = lm.chat([_user(prompt_files.fill(judge, first=current[i], second=e))
                        for i, e in alive], config.judge)
    for (i, evolved), resp, verdict in zip(alive, responses, verdicts):
      judged = parse_equal(verdict.text)
      reason = eliminate(current[i], evolved, resp.text, resp.truncated, judged,
                         config.sorry_max_words)
      if reason:
        tally.add("evolutions", reason)
        continue
      tally.add("evolutions", "kept")
      tally.add("operators_kept", ops[i])
      rec_id = f"evol-{start + i:06d}-r{rnd}"
      records.append(((i, rnd), make_record(
          rec_id, instruction=evolved, input="", output=resp.text.strip(),
          provenance={"method": METHOD, "round": rnd, "parent_id": parents[i],
                      "backend": lm.kind, "model": lm.model, "prompt_version": p["version"],
                      "operator": ops[i], "seed_id": chunk[i][0]})))
      parents[i] = rec_id
      current[i] = evolved
  return [r for _, r in sorted(records, key=lambda x: x[0])]


def run(config: EvolConfig, backend: Backend, out_dir: str, *,
        progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or extends) Evol-Instruct into `out_dir`; returns the report."""
  p = prompt_files.load(config.prompts)
  unknown = set(config.operators) - set(IN_DEPTH) - {IN_BREADTH}
  if unknown or not config.operators:
    raise ValueError(f"operators must be a non-empty subset of {IN_DEPTH + (IN_BREADTH,)}; "
                     f"unknown: {sorted(unknown)}")
  seeds = load_instructions(config.instructions)[:config.num_instructions]
  settings = dataclasses.asdict(config) | {"backend": backend.kind, "model": backend.model,
                                           "prompt_version": p["version"]}
  with RunDir(out_dir, METHOD, settings) as rd:
    lm = rd.cached(backend)
    tally = Tally()
    bar = progress_bar(len(seeds), METHOD, progress)
    for start in range(0, len(seeds), config.chunk_size):
      chunk = seeds[start:start + config.chunk_size]
      for rec in _evolve_chunk(p, lm, config, chunk, start, tally):
        rd.emit(rec)
      bar.update(len(chunk))
    bar.close()
    return rd.finish(tally, lineages=len(seeds))


flags.adopt_module_key_flags(cli)  # --help lists the shared flags (backend, output, ...) too
_INSTRUCTIONS = flags.DEFINE_string("instructions", None,
                                    "JSONL of seed instructions (\"instruction\", optional "
                                    "\"input\"; the 175-task format works too).")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Evolution rounds (M).")


def _main(argv: list[str]) -> None:
  del argv
  config = EvolConfig(
      instructions=cli.require(_INSTRUCTIONS.value, "instructions"),
      num_instructions=cli.require_positive(cli.NUM_INSTRUCTIONS.value, "num_instructions"),
      rounds=cli.require_positive(_ROUNDS.value, "rounds"), seed=cli.SEED.value)
  report = run(config, cli.build_backend(), cli.require(cli.OUT.value, "out"),
               progress=cli.PROGRESS.value)
  cli.print_report(report)


if __name__ == "__main__":
  cli.main(_main)
