"""Print rendered examples of a mixture and per-task statistics.

    python -m instruct_jax.data.preview --mixture builtin -n 5
    python -m instruct_jax.data.preview --mixture niv2_test --superni_dir ../shared/data/natural-instructions \
        --inputs_length 1024 --targets_length 128 --tokenizer /path/to/spm.model

Shows each example with its task, template id, shot count and token counts, then, over
`--stats_examples` examples, per task: examples, share of the mixture next to its target rate, mean
input/output tokens, truncation rate and examples dropped because their output would vanish; then what
the sources skipped while reading (malformed lines in lenient mode, empty outputs). Without
`--tokenizer`, a throwaway vocabulary is trained on the previewed mixture first (a second or two).

A mixture of TFDS datasets (e.g. `--mixture flan2021 --tfds_data_dir DIR`) previews the datasets prepared
under DIR and lists the others, each with the `tfds build NAME --data_dir=DIR --file_format=array_record`
command that prepares it; only when none is prepared is that an error.
"""
from __future__ import annotations

import tempfile
from collections.abc import Sequence

from absl import flags, logging

from instruct_jax import errors
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures as mixtures_lib
from instruct_jax.data import pipeline
from instruct_jax.data import render as render_lib
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib


def _indent(text: str) -> str:
  return "\n".join("    " + line for line in text.splitlines()) or "    <empty>"


def preview(config: pipeline.PipelineConfig, tokenizer: tokenizer_lib.Tokenizer, tasks, mixtures, *,
            num_examples: int, stats_examples: int) -> str:
  """The preview text: `num_examples` rendered examples, then statistics over `stats_examples`."""
  examples, task_names, rates = pipeline.rendered_examples(config, tasks, mixtures, tokenizer=tokenizer)
  out = [f"mixture {config.mixture!r}: {len(task_names)} tasks, split {config.split!r}", ""]
  shown = 0
  for ex in examples:
    if shown == num_examples:
      break
    if ex is None:
      continue
    shown += 1
    n_in, n_out = (len(tokenizer.encode(ex[k])) for k in ("inputs", "targets"))
    out += [f"[{shown}] task {task_names[ex['task_index']]}  template {ex['template_id']}  shots {ex['shots']}  "
            f"tokens in {n_in} / out {n_out}", "  inputs:", _indent(ex["inputs"]), "  targets:",
            _indent(ex["targets"]), ""]
  stats = pipeline.Stats(task_names)
  featurize = pipeline.Featurizer(config, tokenizer, stats)
  for i in range(stats_examples):
    featurize(examples[i])
  out += [f"statistics over {stats_examples} examples (tokens before truncation; budgets "
          f"{config.inputs_length}/{config.targets_length}):", stats.table(rates)]
  for name in task_names:  # what the sources skipped while reading (malformed lines, empty outputs)
    read = getattr(tasks[name].source, "stats", None)
    if read is not None and (read.bad_lines or read.empty_outputs):
      out.append(f"{name}: skipped {read.bad_lines} malformed lines and {read.empty_outputs} empty outputs; "
                 f"first: {read.problems[0]}")
  return "\n".join(out)


def unreadable(mixture: str, tasks, mixtures, split: str) -> dict[str, str]:
  """{task: why} for the tasks of `mixture` whose `split` cannot be read (e.g. TFDS datasets not prepared)."""
  out = {}
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)  # TFDS logs a line or two per dataset it does not find; the report says it
  try:
    for name in mixtures_lib.leaf_tasks(mixture, tasks, mixtures):
      try:
        tasks[name].num_examples(split)
      except sources.DataError as e:
        out[name] = str(e)
  finally:
    logging.set_verbosity(verbosity)
  return out


def without_unreadable(mixture: str, tasks, mixtures, split: str, data_dir: str | None):
  """The mixture catalogue without the tasks of `mixture` that cannot be read, and lines that say which they are
  and how to prepare them; a DataError (listing the same) if none of them can be read."""
  missing = unreadable(mixture, tasks, mixtures, split)
  if not missing:
    return mixtures, []
  lines = [f"{len(missing)} dataset(s) of {mixture!r} are not readable (TFDS datasets must be prepared in array_record "
           f"format under --tfds_data_dir={data_dir}); prepare them with:"]
  for name, why in missing.items():
    source = tasks[name].source
    lines.append(f"  {flan2021.build_command(source.name, data_dir)}" if isinstance(source, sources.TfdsSource)
                 else f"  {name}: {why}")
  lines.append("(`tfds build` needs TensorFlow for some builders; training reads the prepared files without it)")
  total = len(mixtures_lib.leaf_tasks(mixture, tasks, mixtures))
  if len(missing) == total:
    raise sources.DataError("\n".join([f"none of the {total} datasets of {mixture!r} can be read (TFDS datasets must "
                                       f"be prepared in array_record format under --tfds_data_dir={data_dir}); "
                                       "prepare them with:", *lines[1:]]))
  return mixtures_lib.without_tasks(mixtures, set(missing)), lines + [""]


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  paths = tasks_lib.DataPaths(superni_dir=f.superni_dir, tfds_data_dir=f.tfds_data_dir)
  tasks, mixtures = mixtures_lib.catalogues(paths)
  mixtures, notes = without_unreadable(f.mixture, tasks, mixtures, f.split, f.tfds_data_dir)
  for line in notes:
    print(line)
  render_cfg = render_lib.RenderConfig(
      num_templates=f.num_templates,
      template_ids=tuple(int(i) for i in f.template_ids) if f.template_ids else None,
      template_choice=f.template_choice, few_shot_rate=f.few_shot_rate, options_rate=f.options_rate,
      inversion_rate=f.inversion_rate, cot_rate=f.cot_rate)
  config = pipeline.PipelineConfig(mixture=f.mixture, model_kind=f.model_kind, inputs_length=f.inputs_length,
                                   targets_length=f.targets_length, split=f.split, seed=f.seed, render=render_cfg)
  with tempfile.TemporaryDirectory() as tmp:
    if f.tokenizer:
      tokenizer = tokenizer_lib.load(f.tokenizer)
    else:
      rates = mixtures_lib.task_rates(config.mixture, tasks, mixtures, split=config.split)
      texts = render_lib.sample_texts(rates, tasks, render_cfg, n=2000, seed=config.seed, split=config.split)
      tokenizer = tokenizer_lib.train(texts, vocab_size=2000, out_dir=tmp)
      print(f"(no --tokenizer: trained a throwaway {tokenizer.vocab_size}-piece vocabulary on 2000 examples)\n")
    print(preview(config, tokenizer, tasks, mixtures, num_examples=f.num_examples, stats_examples=f.stats_examples))


def define_flags() -> None:
  """The command's flags (defined only when run as a command, so importing this module defines none)."""
  flags.DEFINE_string("mixture", None, "Mixture or task name.", required=True)
  flags.DEFINE_integer("num_examples", 5, "Examples to print.", short_name="n")
  flags.DEFINE_integer("stats_examples", 2000, "Examples the statistics are computed over.")
  flags.DEFINE_string("tokenizer", None, "SentencePiece .model, tokenizer.json or a directory holding one (e.g. "
                      "a checkpoint's); default: train a throwaway SentencePiece model.")
  flags.DEFINE_enum("model_kind", "encoder_decoder", pipeline.MODEL_KINDS, "Model kind.")
  flags.DEFINE_integer("inputs_length", 512, "Input token budget.")
  flags.DEFINE_integer("targets_length", 128, "Target token budget.")
  flags.DEFINE_string("split", "train", "Split.")
  flags.DEFINE_integer("seed", 0, "Seed.")
  flags.DEFINE_float("few_shot_rate", 0.0, "Share of few-shot examples.")
  flags.DEFINE_float("options_rate", 1.0, "Share of classification examples showing options.")
  flags.DEFINE_float("inversion_rate", 0.0, "Share of inverted examples.")
  flags.DEFINE_float("cot_rate", 0.0, "Share of chain-of-thought examples.")
  flags.DEFINE_integer("num_templates", None, "Use the first N templates per task.")
  flags.DEFINE_list("template_ids", None, "Use only these template ids.")
  flags.DEFINE_enum("template_choice", "random", render_lib.TEMPLATE_CHOICES, "Template choice.")
  flags.DEFINE_string("superni_dir", None, "natural-instructions checkout (tasks/, splits/).")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir with prepared datasets.")

if __name__ == "__main__":
  define_flags()
  errors.run(main)
