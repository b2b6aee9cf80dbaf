"""Self-Instruct: grow a pool of instructions from seed tasks, then write instances for each.

    python -m instruct_jax.synthetic.self_instruct --seed-tasks seed_tasks.jsonl \
        --backend openai --base-url http://127.0.0.1:8000/v1 --model NAME \
        --out /tmp/si --num-instructions 1000

`--num-instructions` counts machine instructions accepted into the pool. Each step sends
`requests_per_step` generation prompts; each prompt lists 8 instructions (6 seed + 2 machine, all
seed while the pool has no machine instruction yet) as a numbered list left open at "9.". A response
cut by the token limit is dropped whole. Each listed instruction goes through the heuristic filters
(filters.instruction_filter) and the ROUGE-L novelty filter against seeds and accepted instructions
(rouge_novelty; F > 0.7 is rejected, exactly 0.7 is kept) and joins the pool at once. Accepted
instructions are then classified (few-shot Yes/No, greedy, 3 tokens; unparsable answers count as
"No") and get instances: output-first (label, then input) for classification tasks, input-first
otherwise. Instances pass the instance filters, repeats are dropped, a task giving one input two
outputs is dropped whole, and at most 5 instances are kept. Each instance is one output record
(id `si-<task>-<instance>`). Seed tasks use the 175-task format:
{"id", "instruction", "instances": [{"input", "output"}], "is_classification"}.
"""
from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from absl import flags

from instruct_jax.synthetic import cli, prompts as prompt_files
from instruct_jax.lm.backends import Backend, Completion, GenParams
from instruct_jax.synthetic.filters import ALPACA_EXTRA_BLACKLIST, instruction_filter
from instruct_jax.synthetic.filters import select_instances
from instruct_jax.synthetic.parsers import Instance, parse_input_first, parse_numbered_list
from instruct_jax.synthetic.parsers import parse_output_first, parse_yes_no
from instruct_jax.synthetic.records import make_record, read_jsonl, text_field
from instruct_jax.synthetic.rouge_novelty import NoveltyIndex
from instruct_jax.synthetic.runner import RunDir, Tally, progress_bar

METHOD = "self_instruct"


@dataclasses.dataclass(frozen=True)
class SelfInstructConfig:
  seed_tasks: str
  num_instructions: int
  requests_per_step: int = 8
  prompt_instructions: int = 8
  machine_in_prompt: int = 2
  rouge_threshold: float = 0.7
  rouge_float_compat: bool = False
  max_instances: int = 5
  extra_blacklist: tuple[str, ...] = ()
  patience: int = 50  # stop after this many steps in a row that accept nothing
  seed: int = 0
  generation: GenParams = GenParams(max_new_tokens=1024, temperature=0.7, top_p=0.5,
                                    presence_penalty=2.0)
  classification: GenParams = GenParams(max_new_tokens=3, temperature=0.0)
  instances: GenParams = GenParams(max_new_tokens=350, temperature=0.0)
  prompts: str = METHOD


@dataclasses.dataclass(frozen=True)
class SeedTask:
  id: str
  instruction: str
  instances: tuple[Instance, ...]
  is_classification: bool


def load_seed_tasks(path: str) -> list[SeedTask]:
  """Reads the 175-task JSONL format; errors name the file, line and field."""
  tasks = []
  for lineno, obj in read_jsonl(path):
    where = f"{path}:{lineno}"
    instances = obj.get("instances", [])
    if not isinstance(instances, list):
      raise ValueError(f"{where}: field 'instances' must be a list")
    parsed = tuple(Instance(text_field(x, "input", f"{where} instance {i}", required=False),
                            text_field(x, "output", f"{where} instance {i}"))
                   for i, x in enumerate(instances))
    is_cls = obj.get("is_classification", False)
    if not isinstance(is_cls, bool):
      raise ValueError(f"{where}: field 'is_classification' must be true or false")
    tasks.append(SeedTask(str(obj.get("id", f"seed_{lineno}")), text_field(obj, "instruction", where),
                          parsed, is_cls))
  if not tasks:
    raise ValueError(f"{path}: no seed tasks")
  return tasks


# --- prompts ---

def generation_prompt(p: dict[str, Any], instructions: Sequence[str]) -> str:
  """Header, then the instructions as a numbered list, left open at the next number."""
  gen = p["generation"]
  items = "".join(prompt_files.fill(gen["item"], number=str(i + 1), instruction=x) + "\n"
                  for i, x in enumerate(instructions))
  return f"{gen['header']}\n{items}{len(instructions) + 1}."


def classification_prompt(p: dict[str, Any], instruction: str) -> str:
  c = p["classification"]
  demos = "".join(prompt_files.fill(c["item"], instruction=d["task"], answer=d["answer"])
                  for d in c["demos"])
  return f"{c['header']}\n{demos}" + prompt_files.fill(c["query"], instruction=instruction)


def input_first_prompt(p: dict[str, Any], instruction: str) -> str:
  c = p["instances_input_first"]
  blocks = []
  for d in c["demos"]:
    examples = "".join(f"Example {j + 1}\nInput: {ex['input'] or c['no_input']}\n"
                       f"Output: {ex['output']}\n" for j, ex in enumerate(d["examples"]))
    blocks.append(f"Task: {d['task']}\n{examples}\n")
  return f"{c['header']}\n{''.join(blocks)}Task: {instruction}\n"


def output_first_prompt(p: dict[str, Any], instruction: str) -> str:
  c = p["instances_output_first"]
  blocks = []
  for d in c["demos"]:
    examples = "".join(f"Class label: {ex['label']}\nInput: {ex['input']}\n" for ex in d["examples"])
    blocks.append(f"Task: {d['task']}\n{examples}\n")
  return f"{c['header']}\n{''.join(blocks)}Task: {instruction}\n"


def prompt_instructions(rng: random.Random, seeds: Sequence[SeedTask], machine: Sequence[str],
                        total: int, from_machine: int) -> list[str]:
  """`from_machine` machine instructions (fewer while the pool is small), the rest seeds, shuffled."""
  picked = rng.sample(list(machine), min(from_machine, len(machine)))
  picked += [s.instruction for s in rng.sample(list(seeds), min(total - len(picked), len(seeds)))]
  rng.shuffle(picked)
  return picked


# --- the run ---

def _instances_for(p, lm, config, accepted, tally, rd, step, stop_params) -> None:
  """Classifies the newly accepted instructions, writes their instances and emits records."""
  cls_params, inst_params = stop_params
  answers = lm.complete([classification_prompt(p, x) for _, x in accepted], cls_params)
  is_cls = []
  for a in answers:
    verdict = parse_yes_no(a.text)
    tally.add("classification", {True: "yes", False: "no", None: "unparsable"}[verdict])
    is_cls.append(bool(verdict))
  prompts = [output_first_prompt(p, x) if c else input_first_prompt(p, x)
             for (_, x), c in zip(accepted, is_cls)]
  completions = lm.complete(prompts, inst_params)
  for (k, instruction), cls, comp in zip(accepted, is_cls, completions):
    parsed, bad = (parse_output_first if cls else parse_input_first)(comp.text)
    tally.add("instances", "unparsable", bad)
    if comp.truncated and parsed:  # the last one may be cut off mid-way
      parsed = parsed[:-1]
      tally.add("instances", "cut_by_token_limit")
    kept, dropped, task_reason = select_instances(parsed, config.max_instances)
    for reason, n in dropped.items():
      tally.add("instances", reason, n)
    if task_reason:
      tally.add("tasks", task_reason)
      continue
    tally.add("tasks", "kept")
    tally.add("instances", "kept", len(kept))
    for j, inst in enumerate(kept):
      rd.emit(make_record(
          f"si-{k:06d}-{j}", instruction=instruction, input=inst.input, output=inst.output,
          provenance={"method": METHOD, "round": step, "parent_id": None, "backend": lm.kind,
                      "model": lm.model, "prompt_version": p["version"],
                      "instruction_id": f"si-{k:06d}", "is_classification": cls,
                      "instance_index": j}))


def run(config: SelfInstructConfig, backend: Backend, out_dir: str, *,
        progress: bool = False) -> dict[str, Any]:
  """Runs (or resumes, or extends) Self-Instruct into `out_dir`; returns the report."""
  p = prompt_files.load(config.prompts)
  seeds = load_seed_tasks(config.seed_tasks)
  if config.machine_in_prompt > config.prompt_instructions:
    raise ValueError("machine_in_prompt must not exceed prompt_instructions")
  settings = dataclasses.asdict(config) | {"backend": backend.kind, "model": backend.model,
                                           "prompt_version": p["version"]}
  with RunDir(out_dir, METHOD, settings) as rd:
    lm = rd.cached(backend)
    gen_params = dataclasses.replace(config.generation, stop=tuple(p["generation"]["stop"]))
    stop_params = (config.classification,
                   dataclasses.replace(config.instances, stop=tuple(p["instances_input_first"]["stop"])))
    tally = Tally()
    index = NoveltyIndex(config.rouge_threshold, float_compat=config.rouge_float_compat)
    index.extend(s.instruction for s in seeds)
    machine: list[str] = []
    bar = progress_bar(config.num_instructions, METHOD, progress)
    step = idle = 0
    while len(machine) < config.num_instructions and idle < config.patience:
      requests, open_numbers = [], []
      for r in range(config.requests_per_step):
        rng = random.Random(f"{METHOD}:{config.seed}:{step}:{r}")
        shown = prompt_instructions(rng, seeds, machine, config.prompt_instructions,
                                    config.machine_in_prompt)
        requests.append(generation_prompt(p, shown))
        open_numbers.append(len(shown) + 1)
      completions: list[Completion] = lm.complete(requests, gen_params)
      accepted: list[tuple[int, str]] = []
      for comp, first in zip(completions, open_numbers):
        if len(machine) >= config.num_instructions:
          break
        if comp.truncated:
          tally.add("responses", "cut_by_token_limit")
          continue
        tally.add("responses", "kept")
        for instruction in parse_numbered_list(comp.text, first):
          if len(machine) >= config.num_instructions:
            break
          reason = instruction_filter(instruction, extra_blacklist=config.extra_blacklist)
          if reason is None and not index.add_if_novel(instruction).novel:
            reason = "rouge_too_similar"
          if reason:
            tally.add("instructions", reason)
            continue
          tally.add("instructions", "kept")
          accepted.append((len(machine), instruction))
          machine.append(instruction)
          bar.update(1)
      if accepted:
        _instances_for(p, lm, config, accepted, tally, rd, step, stop_params)
      idle = 0 if accepted else idle + 1
      step += 1
    bar.close()
    stopped_early = len(machine) < config.num_instructions
    return rd.finish(tally, instructions_in_pool=len(machine), steps=step,
                     stopped_early=stopped_early, rouge_pairs_checked=index.pairs_seen,
                     rouge_lcs_computed=index.lcs_pairs)


# --- command line ---

flags.adopt_module_key_flags(cli)  # --help lists the shared flags (backend, output, ...) too
_SEED_TASKS = flags.DEFINE_string("seed_tasks", None, "Seed tasks JSONL (175-task format).")
_REQUESTS_PER_STEP = flags.DEFINE_integer("requests_per_step", 8,
                                          "Generation requests sent together per step.")
_ALPACA_BLACKLIST = flags.DEFINE_bool("alpaca_blacklist", False,
                                      "Also drop instructions naming video, audio, music, "
                                      "flowchart or diagram (Alpaca's additions).")


def _main(argv: list[str]) -> None:
  del argv
  config = SelfInstructConfig(
      seed_tasks=cli.require(_SEED_TASKS.value, "seed_tasks"),
      num_instructions=cli.require_positive(cli.NUM_INSTRUCTIONS.value, "num_instructions"),
      requests_per_step=_REQUESTS_PER_STEP.value, seed=cli.SEED.value,
      extra_blacklist=ALPACA_EXTRA_BLACKLIST if _ALPACA_BLACKLIST.value else ())
  report = run(config, cli.build_backend(), cli.require(cli.OUT.value, "out"),
               progress=cli.PROGRESS.value)
  cli.print_report(report)


if __name__ == "__main__":
  cli.main(_main)
