"""Instruction back-translation (Humpback): write instructions for unlabelled texts, keep good pairs.

    python -m instruct_jax.synthetic.backtranslation --texts web.jsonl --seed-data seed.jsonl \
        --backend openai --base-url http://127.0.0.1:8000/v1 --model FORWARD \
        --backward-model BACKWARD --out /tmp/bt --num-instructions 5000 --min-score 5

`--num-instructions` counts unlabelled texts, in file order (each line has "text", or "output").
Self-augmentation: the backward model (any backend; by default the forward one) reads each text
and writes the instruction it answers, from a few-shot prompt of seed pairs (`--seed-data`, JSONL
with "instruction" and "output"). Self-curation: the forward model grades each pair with a 1-5
rubric that must end in "Score: N"; pairs scoring >= `min_score` survive. Ratings without a
readable score are counted ("unparsable") and the pair is dropped; nothing crashes.

Iterations. Humpback retrains the forward model on the pairs kept by one iteration before rating
again. Without training in the loop, iteration t > 1 shows the rater, as examples of a 5, pairs
kept at iteration t-1 by earlier chunks (and the seed pairs), and re-grades the survivors of
iteration t-1. A record is written only for pairs that pass every iteration; its system message
is the prompt file's `augmented_system` (seed pairs, written with `emit_seed`, get `seed_system`),
so training can tell the two kinds apart. Texts run in chunks of `chunk_size`.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from absl import flags

from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.lm.backends import Backend, GenParams
from instruct_jax.synthetic.parsers import clean_text, parse_score
from instruct_jax.synthetic.records import instruction_triples, make_record, read_jsonl
from instruct_jax.synthetic.records import text_field
from instruct_jax.synthetic.runner import RunDir, Tally, progress_bar

METHOD = "backtranslation"


@dataclasses.dataclass(frozen=True)
class BacktranslationConfig:
  texts: str
  num_instructions: int
  seed_data: str | None = None
  iterations: int = 2
  min_score: int = 5
  num_demos: int = 3
  rating_examples: int = 2
  chunk_size: int = 32
  emit_seed: bool = False
  seed: int = 0
  backward: GenParams = GenParams(max_new_tokens=256, temperature=0.7, top_p=0.9)
  rating: GenParams = GenParams(max_new_tokens=512, temperature=0.0)
  prompts: str = METHOD


def load_texts(path: str) -> list[tuple[str, str]]:
  out = []
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    field = "text" if "text" in obj else "output"
    text = text_field(obj, field, where)
    out.append((str(obj.get("id", f"line{lineno}")), text))
  if not out:
    raise ValueError(f"{path}: no texts")
  return out


def load_pairs(path: str) -> list[tuple[str, str]]:
  """(instruction, output) seed pairs; an input is appended to its instruction."""
  pairs = []
  for lineno, obj in read_jsonl(path):
    for instruction, extra, output in instruction_triples(obj, f"{path}:{lineno}"):
      pairs.append((f"{instruction}\n\n{extra}" if extra.strip() else instruction, output))
  return pairs


def backward_prompt(p: dict[str, Any], demos: Sequence[tuple[str, str]], text: str) -> str:
  b = p["backward"]
  shown = "".join(prompt_files.fill(b["item"], output=o, instruction=i) for i, o in demos)
  return f"{b['header']}\n{shown}" + prompt_files.fill(b["query"], output=text)


def rating_prompt(p: dict[str, Any], examples: Sequence[tuple[str, str]], instruction: str,
                  output: str) -> str:
  r = p["rating"]
  shown = "".join(prompt_files.fill(r["example"], instruction=i, output=o) for i, o in examples)
  return prompt_files.fill(r["template"], examples=shown, instruction=instruction, output=output)


def run(config: BacktranslationConfig, backend: Backend, out_dir: str, *,
        backward_backend: Backend | None = None, progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or extends) back-translation into `out_dir`; returns the report."""
  if not 1 <= config.min_score <= 5:
    raise ValueError(f"min_score must be in 1..5, got {config.min_score}")
  p = prompt_files.load(config.prompts)
  texts = load_texts(config.texts)[:config.num_instructions]
  seeds = load_pairs(config.seed_data) if config.seed_data else []
  backward_backend = backward_backend or backend
  settings = dataclasses.asdict(config) | {
      "backend": backend.kind, "model": backend.model, "backward_backend": backward_backend.kind,
      "backward_model": backward_backend.model, "prompt_version": p["version"]}
  with RunDir(out_dir, METHOD, settings) as rd:
    forward, backward = rd.cached(backend), rd.cached(backward_backend)
    backward_params = dataclasses.replace(config.backward, stop=tuple(p["backward"]["stop"]))
    tally = Tally()
    base = {"method": METHOD, "parent_id": None, "backend": forward.kind, "model": forward.model,
            "prompt_version": p["version"], "backward_backend": backward.kind,
            "backward_model": backward.model}
    if config.emit_seed:
      for j, (instruction, output) in enumerate(seeds):
        rd.emit(make_record(f"bt-seed-{j:06d}", instruction=instruction, input="", output=output,
                            system=p["seed_system"], provenance=base | {"round": 0, "scores": []}))
    kept_by_iteration: list[list[tuple[str, str]]] = [[] for _ in range(config.iterations + 1)]
    bar = progress_bar(len(texts), METHOD, progress)
    for start in range(0, len(texts), config.chunk_size):
      chunk = texts[start:start + config.chunk_size]
      prompts = []
      for i in range(len(chunk)):
        rng = random.Random(f"{METHOD}:{config.seed}:{start + i}")
        prompts.append(backward_prompt(p, rng.sample(seeds, min(config.num_demos, len(seeds))),
                                       chunk[i][1]))
      alive = []
      for i, ans in enumerate(backward.complete(prompts, backward_params)):
        instruction = clean_text(ans.text)
        reason = ("instruction_cut_by_token_limit" if ans.truncated else
                  "empty_instruction" if not instruction else None)
        if reason:
          tally.add("augmentation", reason)
          continue
        tally.add("augmentation", "kept")
        alive.append((i, instruction, []))
      earlier = [list(kept) for kept in kept_by_iteration]  # earlier chunks only: prefix-stable
      for it in range(1, config.iterations + 1):
        pool = seeds + earlier[it - 1] if it > 1 else []
        requests = []
        for i, instruction, _ in alive:
          rng = random.Random(f"{METHOD}:rate:{config.seed}:{start + i}:{it}")
          examples = rng.sample(pool, min(config.rating_examples, len(pool)))
          requests.append(rating_prompt(p, examples, instruction, chunk[i][1]))
        answers = forward.chat([[{"role": "user", "content": r}] for r in requests], config.rating)
        survivors = []
        for (i, instruction, scores), ans in zip(alive, answers):
          score = parse_score(ans.text)
          stage = f"curation_iteration_{it}"
          if score is None:
            tally.add(stage, "unparsable")
            continue
          if score < config.min_score:
            tally.add(stage, "below_min_score")
            continue
          tally.add(stage, "kept")
          kept_by_iteration[it].append((instruction, chunk[i][1]))
          survivors.append((i, instruction, scores + [score]))
        alive = survivors
      for i, instruction, scores in alive:
        rd.emit(make_record(f"bt-{start + i:06d}", instruction=instruction, input="",
                            output=chunk[i][1], system=p["augmented_system"],
                            provenance=base | {"round": config.iterations,
                                               "parent_id": chunk[i][0], "scores": scores}))
      bar.update(len(chunk))
    bar.close()
    return rd.finish(tally, texts=len(texts))


flags.adopt_module_key_flags(cli)  # --help lists the shared flags (backend, output, ...) too
_TEXTS = flags.DEFINE_string("texts", None, "JSONL of unlabelled texts (\"text\" or \"output\").")
_SEED_DATA = flags.DEFINE_string("seed_data", None,
                                 "JSONL of seed (instruction, output) pairs for the prompts.")
_ITERATIONS = flags.DEFINE_integer("iterations", 2, "Self-curation iterations.")
_MIN_SCORE = flags.DEFINE_integer("min_score", 5, "Keep pairs rated at least this (1-5).")
_BACKWARD_MODEL = flags.DEFINE_string("backward_model", None,
                                      "Backward model name (default: --model).")
_BACKWARD_BASE_URL = flags.DEFINE_string("backward_base_url", None,
                                         "Backward model endpoint (default: --base_url).")
_BACKWARD_WORKDIR = flags.DEFINE_string("backward_workdir", None,
                                        "With --backend model: the backward model's workdir "
                                        "(default: --workdir).")
_EMIT_SEED = flags.DEFINE_bool("emit_seed", False, "Also write the seed pairs (seed_system tag).")


def _main(argv: list[str]) -> None:
  del argv
  config = BacktranslationConfig(
      texts=cli.require(_TEXTS.value, "texts"),
      num_instructions=cli.require_positive(cli.NUM_INSTRUCTIONS.value, "num_instructions"),
      seed_data=_SEED_DATA.value, iterations=cli.require_positive(_ITERATIONS.value, "iterations"),
      min_score=_MIN_SCORE.value, emit_seed=_EMIT_SEED.value, seed=cli.SEED.value)
  forward = cli.build_backend()
  backward = None
  if _BACKWARD_MODEL.value or _BACKWARD_BASE_URL.value or _BACKWARD_WORKDIR.value:
    backward = cli.build_backend(model=_BACKWARD_MODEL.value, base_url=_BACKWARD_BASE_URL.value,
                                 workdir=_BACKWARD_WORKDIR.value)
  report = run(config, forward, cli.require(cli.OUT.value, "out"), backward_backend=backward,
               progress=cli.PROGRESS.value)
  cli.print_report(report)


if __name__ == "__main__":
  cli.main(_main)
