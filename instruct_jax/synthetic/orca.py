"""Orca-style explanation traces: teacher responses to sampled queries under chosen system messages.

    python -m instruct_jax.synthetic.orca --queries queries.jsonl \
        --backend openai --base-url http://127.0.0.1:8000/v1 --model NAME \
        --out /tmp/orca --num-instructions 10000

`--num-instructions` counts queries drawn. Each line of the queries file is
{"collection": "cot" | "niv2" | "t0" | "flan2021", "task": str, "instruction": str,
 "input": str (optional), "multiple_choice": bool (optional), "id": str (optional)}.
Queries are drawn stratified by task as Orca does: pick a random task that still has queries, pop
one of its queries (tasks are (collection, task) pairs). Each drawn query gets a system message
chosen uniformly among those its collection allows (prompts/orca.yaml: 16 messages following the
16 Orca intents; messages marked multiple-choice-only are skipped for other queries). The teacher
answers with the system message (none for the empty message #1) and the query as the user turn.
Records keep the system message; a response cut by the token limit or empty is dropped.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Sequence
from typing import Any

from absl import flags

from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.lm.backends import Backend, GenParams
from instruct_jax.synthetic.records import make_record, read_jsonl, text_field
from instruct_jax.synthetic.runner import RunDir, Tally, progress_bar

METHOD = "orca"


@dataclasses.dataclass(frozen=True)
class OrcaConfig:
  queries: str
  num_instructions: int
  chunk_size: int = 32
  seed: int = 0
  teacher: GenParams = GenParams(max_new_tokens=1024, temperature=0.7)
  prompts: str = METHOD


@dataclasses.dataclass(frozen=True)
class Query:
  id: str
  collection: str
  task: str
  instruction: str
  input: str
  multiple_choice: bool


def load_queries(path: str, collections: Sequence[str]) -> list[Query]:
  out = []
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    coll = text_field(obj, "collection", where).lower()
    if coll not in collections:
      raise ValueError(f"{where}: field 'collection' must be one of {sorted(collections)}, "
                       f"got {obj['collection']!r}")
    mc = obj.get("multiple_choice", False)
    if not isinstance(mc, bool):
      raise ValueError(f"{where}: field 'multiple_choice' must be true or false")
    instruction = text_field(obj, "instruction", where)
    if not instruction.strip():
      raise ValueError(f"{where}: field 'instruction' is empty")
    out.append(Query(str(obj.get("id", f"line{lineno}")), coll, text_field(obj, "task", where),
                     instruction, text_field(obj, "input", where, required=False), mc))
  if not out:
    raise ValueError(f"{path}: no queries")
  return out


def stratified(queries: Sequence[Query], seed: int) -> Iterator[Query]:
  """Endless-until-empty draw: a uniformly random non-empty task, then a random query of it."""
  rng = random.Random(f"{METHOD}:sample:{seed}")
  by_task: dict[tuple[str, str], list[Query]] = {}
  for q in queries:
    by_task.setdefault((q.collection, q.task), []).append(q)
  pools = [by_task[k] for k in sorted(by_task)]
  for pool in pools:
    rng.shuffle(pool)
  while pools:
    j = rng.randrange(len(pools))
    yield pools[j].pop()
    if not pools[j]:
      pools.pop(j)


def allowed_messages(p: dict[str, Any], query: Query) -> list[int]:
  mc_only = set(p.get("multiple_choice_only", []))
  ids = [i for i in p["collections"][query.collection]
         if query.multiple_choice or i not in mc_only]
  if not ids:
    raise ValueError(f"{p['_path']}: no system message allowed for a {query.collection} query")
  return ids


def conversation(system: str, query: Query) -> list[dict[str, str]]:
  user = f"{query.instruction}\n\n{query.input}" if query.input.strip() else query.instruction
  return ([{"role": "system", "content": system}] if system else []) + [
      {"role": "user", "content": user}]


def run(config: OrcaConfig, backend: Backend, out_dir: str, *,
        progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or extends) Orca-style generation into `out_dir`; returns the report."""
  p = prompt_files.load(config.prompts)
  messages = {int(k): v for k, v in p["system_messages"].items()}
  queries = load_queries(config.queries, list(p["collections"]))
  settings = dataclasses.asdict(config) | {"backend": backend.kind, "model": backend.model,
                                           "prompt_version": p["version"]}
  with RunDir(out_dir, METHOD, settings) as rd:
    lm = rd.cached(backend)
    tally = Tally()
    draw = stratified(queries, config.seed)
    bar = progress_bar(config.num_instructions, METHOD, progress)
    k = 0
    while k < config.num_instructions:
      batch = []
      for q in draw:
        rng = random.Random(f"{METHOD}:system:{config.seed}:{k + len(batch)}")
        batch.append((k + len(batch), q, rng.choice(allowed_messages(p, q))))
        if len(batch) == config.chunk_size or k + len(batch) == config.num_instructions:
          break
      if not batch:
        break
      answers = lm.chat([conversation(messages[m], q) for _, q, m in batch], config.teacher)
      for (idx, q, m), ans in zip(batch, answers):
        tally.add("system_messages", str(m))
        reason = ("cut_by_token_limit" if ans.truncated else
                  "empty_response" if not ans.text.strip() else None)
        if reason:
          tally.add("responses", reason)
          continue
        tally.add("responses", "kept")
        rd.emit(make_record(
            f"orca-{idx:06d}", instruction=q.instruction, input=q.input, output=ans.text.strip(),
            system=messages[m],
            provenance={"method": METHOD, "round": 0, "parent_id": q.id, "backend": lm.kind,
                        "model": lm.model, "prompt_version": p["version"], "system_message_id": m,
                        "collection": q.collection, "task": q.task}))
      k += len(batch)
      bar.update(len(batch))
    bar.close()
    return rd.finish(tally, queries_drawn=k, queries_available=len(queries),
                     stopped_early=k < config.num_instructions)


flags.adopt_module_key_flags(cli)  # --help lists the shared flags (backend, output, ...) too
_QUERIES = flags.DEFINE_string("queries", None, "JSONL of source queries (see the module doc).")


def _main(argv: list[str]) -> None:
  del argv
  config = OrcaConfig(
      queries=cli.require(_QUERIES.value, "queries"),
      num_instructions=cli.require_positive(cli.NUM_INSTRUCTIONS.value, "num_instructions"),
      seed=cli.SEED.value)
  report = run(config, cli.build_backend(), cli.require(cli.OUT.value, "out"),
               progress=cli.PROGRESS.value)
  cli.print_report(report)


if __name__ == "__main__":
  cli.main(_main)
