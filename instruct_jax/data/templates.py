"""Prompt templates: loading them from the YAML files in `templates/`, and rendering them safely.

A template file maps a task name to a list of templates; a template's id is its position in that list
(append new templates at the end so ids stay stable). An entry is either a string, shorthand for a
standard template whose target is `{answer}`, or a mapping:

    sort_ascending:
      - "Sort these from smallest to largest: {items}"
      - {inputs: "{items}\\nPut them in order.", targets: "{answer}"}
      - {kind: inverted, inputs: "...{answer}...", targets: "{items}"}
      - {kind: cot, inputs: "...", targets: "{rationale} So the answer is {answer}."}
      - {kind: superni, positives: 2, negatives: 0, explanations: false, definition: true}

Kinds: `standard`; `inverted` (asks for the input given the output); `cot` (target spells out a
rationale; used only for tasks whose examples have one); `superni` (the SuperNI definition + examples
encoding, parameters as shown).

Rendering substitutes `{field}` with the example's field and nothing else: no attribute access, no
indexing, no evaluation. `{{` and `}}` give literal braces. A field the example lacks raises
`TemplateError` naming the task, the template and the field.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from instruct_jax.data import sources

TEMPLATE_DIR = pathlib.Path(__file__).with_name("templates")
KINDS = ("standard", "inverted", "cot", "superni")
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|\{|\}")
_SUPERNI_PARAMS = {"positives": 2, "negatives": 0, "explanations": False, "definition": True}


class TemplateError(sources.DataError):
  """A template is malformed or names a field the example lacks."""


@dataclasses.dataclass(frozen=True)
class Template:
  """One prompt template. `params` holds the SuperNI encoding's settings for kind "superni"."""
  id: int
  inputs: str = ""
  targets: str = "{answer}"
  kind: str = "standard"
  params: tuple[tuple[str, Any], ...] = ()

  @property
  def fields(self) -> frozenset[str]:
    return frozenset(template_fields(self.inputs) | template_fields(self.targets))

  def param(self, name: str) -> Any:
    return dict(self.params).get(name, _SUPERNI_PARAMS.get(name))


def template_fields(text: str) -> set[str]:
  """Field names a template string refers to."""
  return {m.group(1) for m in _FIELD.finditer(text) if m.group(1)}


def _check_syntax(text: str, where: str) -> None:
  for m in _FIELD.finditer(text):
    if m.group(0) in ("{", "}"):
      raise TemplateError(f"{where}: stray {m.group(0)!r} at offset {m.start()} (write {{{{ or }}}} for a "
                          "literal brace; fields look like {name})")


def fill(text: str, values: Mapping[str, Any], *, task: str, template_id: int) -> str:
  """Substitutes `{field}` in `text` from `values`; raises TemplateError for a missing field."""

  def sub(m: re.Match) -> str:
    token = m.group(0)
    if token == "{{":
      return "{"
    if token == "}}":
      return "}"
    name = m.group(1)
    if name is None:
      raise TemplateError(f"task {task!r} template {template_id}: stray {token!r} in {text!r}")
    if name not in values:
      raise TemplateError(f"task {task!r} template {template_id}: field {name!r} is not in the example "
                          f"(it has {sorted(values)})")
    value = values[name]
    if isinstance(value, (list, tuple)):
      return ", ".join(str(v) for v in value)
    return str(value)

  return _FIELD.sub(sub, text)


def options_block(options: Sequence[str]) -> str:
  """The answer-options suffix: "OPTIONS:" then one "- choice" per line."""
  return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def _parse_entry(entry: Any, template_id: int, where: str) -> Template:
  if isinstance(entry, str):
    entry = {"inputs": entry}
  if not isinstance(entry, dict):
    raise TemplateError(f"{where}: template {template_id} must be a string or a mapping, got "
                        f"{type(entry).__name__}")
  entry = dict(entry)
  kind = entry.pop("kind", "standard")
  if kind not in KINDS:
    raise TemplateError(f"{where}: template {template_id}: unknown kind {kind!r} (one of {KINDS})")
  if kind == "superni":
    unknown = set(entry) - set(_SUPERNI_PARAMS)
    if unknown:
      raise TemplateError(f"{where}: template {template_id}: unknown superni settings {sorted(unknown)}")
    return Template(id=template_id, kind=kind, params=tuple(sorted(entry.items())))
  unknown = set(entry) - {"inputs", "targets"}
  if unknown:
    raise TemplateError(f"{where}: template {template_id}: unknown fields {sorted(unknown)}")
  if not isinstance(entry.get("inputs"), str) or not entry["inputs"].strip():
    raise TemplateError(f"{where}: template {template_id}: field 'inputs' must be a non-empty string")
  targets = entry.get("targets", "{answer}")
  if not isinstance(targets, str):
    raise TemplateError(f"{where}: template {template_id}: field 'targets' must be a string")
  for text in (entry["inputs"], targets):
    _check_syntax(text, f"{where}: template {template_id}")
  return Template(id=template_id, inputs=entry["inputs"], targets=targets, kind=kind)


def parse(data: Any, where: str) -> dict[str, tuple[Template, ...]]:
  """Parses a loaded YAML document {task: [template, ...]}."""
  if not isinstance(data, dict):
    raise TemplateError(f"{where}: expected a mapping from task name to a list of templates")
  out = {}
  for task, entries in data.items():
    if not isinstance(entries, list) or not entries:
      raise TemplateError(f"{where}: task {task!r}: expected a non-empty list of templates")
    out[task] = tuple(_parse_entry(e, i, f"{where}: task {task!r}") for i, e in enumerate(entries))
  return out


def load_file(path: str | pathlib.Path) -> dict[str, tuple[Template, ...]]:
  """Templates of every task in one YAML file."""
  path = pathlib.Path(path)
  try:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
  except yaml.YAMLError as e:
    mark = getattr(e, "problem_mark", None)
    line = f":{mark.line + 1}" if mark is not None else ""
    raise TemplateError(f"{path}{line}: malformed YAML: {e}") from None
  return parse(data, str(path))


def load(name: str) -> dict[str, tuple[Template, ...]]:
  """Templates shipped with the package: `load("builtin")` reads templates/builtin.yaml."""
  return load_file(TEMPLATE_DIR / f"{name}.yaml")
