"""Prompt files for the synthetic methods: versioned YAML data in `synthetic/prompts/`.

Each file has a top-level `version` string, recorded as `provenance.prompt_version` in every record
made with it; change the version whenever a prompt's wording changes. Templates mark their slots
as `{{name}}` (so prompts may contain JSON or code braces freely) and `fill` refuses to leave a slot
empty or to accept a value the template does not use.
"""
from __future__ import annotations

import os
import re
from typing import Any

import yaml

PROMPT_DIR = os.path.join(os.path.dirname(__file__), "prompts")
_SLOT = re.compile(r"\{\{(\w+)\}\}")


def load(name_or_path: str) -> dict[str, Any]:
  """Loads `prompts/<name>.yaml` (or a YAML file path) and checks it has a version string."""
  path = name_or_path if name_or_path.endswith((".yaml", ".yml")) else os.path.join(
      PROMPT_DIR, name_or_path + ".yaml")
  try:
    with open(path, encoding="utf-8") as f:
      data = yaml.safe_load(f)
  except FileNotFoundError:
    raise ValueError(f"prompt file not found: {path}") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a YAML mapping at the top level")
  if not isinstance(data.get("version"), str) or not data["version"]:
    raise ValueError(f"{path}: missing a non-empty string field 'version'")
  data["_path"] = path
  return data


def get(prompts: dict[str, Any], key: str, kind: type = str) -> Any:
  """prompts[key] checked against `kind`; the error names the file and the key."""
  value = prompts.get(key)
  if not isinstance(value, kind):
    raise ValueError(f"{prompts.get('_path', 'prompt file')}: field {key!r} must be a "
                     f"{kind.__name__}, got {type(value).__name__}")
  return value


def slots(template: str) -> set[str]:
  return set(_SLOT.findall(template))


def fill(template: str, **values: str) -> str:
  """Replaces every `{{name}}` in `template`; every slot must be given and every value used."""
  needed = slots(template)
  missing, unused = needed - set(values), set(values) - needed
  if missing or unused:
    raise ValueError(f"template slots {sorted(needed)}: missing {sorted(missing)}, "
                     f"unused {sorted(unused)}")
  return _SLOT.sub(lambda m: values[m.group(1)], template)
