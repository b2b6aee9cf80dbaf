"""Every `--config.KEY=VALUE` flag written in README.md, launch/README.md and the config docstrings parses on the
config of its command and reaches the code that reads it."""
import ast
import pathlib
import re

import pytest

from instruct_jax import configs, objectives, optim, sharding
from instruct_jax import plan as plan_lib
from instruct_jax.data import chat
from instruct_jax.data import pipeline
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.evals import evaluators
from instruct_jax.models import build, lora

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAG = re.compile(r"--config\.([a-z][\w.]*)=([^\s`'\"]+)")  # KEY=value placeholders are not flags
CONFIG = re.compile(r"--config[ =](configs/[\w./]+(?::\w+)?)")


def _documents() -> dict[str, str]:
  docs = {name: (ROOT / name).read_text() for name in ("README.md", "launch/README.md")}
  for path in sorted((ROOT / "configs").glob("*.py")):
    docs[f"configs/{path.name}"] = ast.get_docstring(ast.parse(path.read_text())) or ""
  return docs


def _flags() -> list[tuple[str, str, str, str]]:
  """(document, config of the command, key, value) for every flag; a command is a paragraph of text."""
  out = []
  for name, text in _documents().items():
    for paragraph in re.split(r"\n\s*\n", text):
      commands = CONFIG.findall(paragraph)
      own = name if name.startswith("configs/") else "configs/quickstart.py"
      for key, value in FLAG.findall(paragraph):
        out.append((name, commands[-1] if commands else own, key, value.rstrip(".,;)")))
  return out


FLAGS = _flags()


def test_the_documents_have_flags():
  keys = {k for _, _, k, _ in FLAGS}
  assert len(FLAGS) > 20 and {"data.render.num_templates", "data.mixing_cap", "init_from"} <= keys


def _literal(value: str):
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def _as_seen_by_the_code(config, key: str):
  """The value of `key` where the code consumes it (the pipeline, optimizer, model factory, ...)."""
  head, _, rest = key.partition(".")
  last = key.rsplit(".", 1)[-1]
  if key.startswith("data.render."):
    return getattr(pipeline.PipelineConfig.from_config(config.data).render, last)
  if key == "data.strict":
    return tasks_lib.DataPaths.from_config(config.data_paths, strict=config.data.strict).strict
  if key == "data.chat_format":  # resolved as the trainer does (a named format here: no tokenizer needed)
    return chat.resolve_format(config.data.chat_format, None).name
  if key == "data.add_chat_tokens":  # read by the trainer (plan.chat_tokens), not the pipeline
    return config.data.add_chat_tokens
  if key in ("data.decontaminate", "data.decontaminate_ngram"):  # read by plan.decontaminated, not the pipeline
    return config.data[last]
  if head == "data":
    return getattr(pipeline.PipelineConfig.from_config(config.data), last)
  if key.startswith("data_paths.instruction_files."):
    return tasks_lib.DataPaths.from_config(config.data_paths).instruction_files[last]
  if key.startswith("data_paths.chat_files."):
    return tasks_lib.DataPaths.from_config(config.data_paths).chat_files[last]
  if key.startswith("data_paths.preference_files."):
    return tasks_lib.DataPaths.from_config(config.data_paths).preference_files[last]
  if key.startswith("data_paths.hf_datasets."):
    return tasks_lib.DataPaths.from_config(config.data_paths).hf_datasets[last]
  if head == "data_paths":
    return getattr(tasks_lib.DataPaths.from_config(config.data_paths), last)
  if head == "optim":
    return getattr(optim.OptimConfig.from_config({**config.optim.to_dict(), "total_steps": config.total_steps}), last)
  if head == "loss":
    return getattr(objectives.from_config(config), last)
  if rest.startswith("lora."):  # the adapters' settings as the model factory reads them (the others act with a rank)
    if last != "rank" and not config.model.lora.rank:
      config.model.lora.rank = 8
    value = getattr(lora.from_section(config.model.lora), last)
    return ",".join(value) if last == "targets" else value  # targets: a comma list on the command line
  if head == "model" and config.model.kind and config.model.size and not config.init_from:
    model = build.from_section(config.model, vocab_size=128).config
    if rest in ("kind",):
      return model.kind
    if rest == "size":
      return config.model.size  # checked by building it
    value = getattr(model, last)
    return next((k for k, v in build.DTYPES.items() if v == value), value) if last.endswith("dtype") else value
  if head == "mesh":
    return dict(zip(sharding.MESH_AXES, sharding.mesh_sizes(dict(config.mesh), 8 * 4 * 2)))[rest]
  if head == "eval":
    evaluators.eval_sets(config.eval)  # the evaluation section still resolves
  if head == "evals":
    evaluators.parse_spec(rest, config.evals[rest], plan_lib.EVALUATOR_KINDS)  # a documented spec is a valid one
  value = config
  for part in key.split("."):
    value = value[part]
  return value


@pytest.mark.parametrize("document,config_file,key,value", FLAGS, ids=[f"{d}:{k}" for d, _, k, _ in FLAGS])
def test_flag_parses_and_takes_effect(document, config_file, key, value):
  del document
  config = configs.from_command_line([f"--config={ROOT / config_file}", f"--config.{key}={value}"])
  expected = _literal(value)
  seen = _as_seen_by_the_code(config, key)
  if key.startswith("mesh.") and expected == -1:
    assert seen >= 1
  elif isinstance(expected, str) and key.startswith(("data_paths.instruction_files.", "data_paths.chat_files.")) \
      and "=" in expected:
    assert seen == expected  # the split list is parsed when the task is built (tasks.split_files)
    assert set(tasks_lib.split_files(seen)) == {"train", "test"}
  else:
    assert seen == expected, (key, seen, expected)


def test_num_templates_keeps_the_first_standard_templates_among_template_ids():
  """The documented meaning of num_templates with template_ids (the quickstart sets template_ids 0-7)."""
  from instruct_jax.data import mixtures, render  # pylint: disable=g-import-not-at-top
  config = configs.from_command_line([f"--config={ROOT / 'configs/quickstart.py'}",
                                      "--config.data.render.num_templates=2"])
  tasks, _ = mixtures.catalogues()
  cfg = pipeline.PipelineConfig.from_config(config.data).render
  chosen = render.select_templates(tasks["builtin/sort_ascending"], cfg)
  assert [t.id for t in chosen["standard"]] == [0, 1]
