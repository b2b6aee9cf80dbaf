"""Loading Python config files (`get_config(arg)`) by path, as configs that build on others do."""
from __future__ import annotations

import importlib.util
import pathlib

import ml_collections


def load(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config(arg) of the Python file at `path` ("file.py:arg" also works)."""
  path = str(path)
  if ":" in path and arg is None:
    path, arg = path.split(":", 1)
  file = pathlib.Path(path)
  if not file.is_file():
    raise FileNotFoundError(f"config file not found: {file}")
  spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"{file} defines no get_config()")
  return module.get_config(arg) if arg is not None else module.get_config()


def sibling(config_file: str, name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """get_config of another config file in the same directory as `config_file` (pass __file__)."""
  return load(pathlib.Path(config_file).with_name(name), arg)
