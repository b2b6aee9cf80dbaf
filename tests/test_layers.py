"""Imports point down: every module of the package sits in a layer (README's layout section), imports only modules of
its own layer or those below (imports inside functions and under TYPE_CHECKING included), and no modules import
each other in a circle."""
import ast
import fnmatch
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "instruct_jax"

# Lowest first. A module takes the first layer with a pattern that matches its dotted name (without "instruct_jax.").
LAYERS = (
    ("base", ("", "errors", "configs", "host", "sharding", "checkpoint")),
    ("data", ("data", "data.*")),
    ("models", ("models", "models.*")),
    ("training parts", ("losses", "objectives", "optim", "flops", "step", "sampling", "aot", "metrics", "workdir")),
    ("checkpoints", ("convert", "convert.*")),
    ("predictions", ("predict",)),
    ("evaluation", ("evals", "evals.evaluators", "evals.metrics", "evals.rank", "evals.score", "evals.baselines",
                    "evals.preference_eval", "evals.answers")),
    ("plan", ("plan", "loop")),
    ("language models", ("lm", "lm.*")),
    ("LM programs", ("synthetic", "synthetic.*", "evals.judge")),
    ("programs", ("dry_run", "train", "evaluate", "generate", "sweep", "evals.lm_eval")),
)


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for path in PACKAGE.rglob("*.py"):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    out[name] = path
  return out


MODULES = _modules()


def _layer(name: str) -> int:
  for i, (_, patterns) in enumerate(LAYERS):
    if any(fnmatch.fnmatchcase(name, p) for p in patterns):
      return i
  raise AssertionError(f"instruct_jax.{name} is in no layer of tests/test_layers.py LAYERS")


def _imports(name: str) -> set[str]:
  """The package's modules `name` imports, anywhere in its file."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()

  def add(dotted: str) -> bool:
    inner = dotted.removeprefix("instruct_jax").removeprefix(".")
    if (dotted == "instruct_jax" or dotted.startswith("instruct_jax.")) and inner in MODULES:
      found.add(inner)
      return True
    return False

  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      for a in node.names:
        add(a.name)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the module's package upwards
        up = package.split(".") if package else []
        up = up[:len(up) - (node.level - 1)]
        base = ".".join(["instruct_jax", *up, *([base] if base else [])])
      for a in node.names:  # a module of the package, else a name defined in `base`
        if not add(f"{base}.{a.name}"):
          add(base)
  return found - {name}


GRAPH = {name: _imports(name) for name in MODULES}


def test_every_module_is_in_a_layer():
  for name in MODULES:
    _layer(name)


@pytest.mark.parametrize("name", sorted(MODULES), ids=lambda n: n or "instruct_jax")
def test_imports_point_down(name):
  up = sorted(t for t in GRAPH[name] if _layer(t) > _layer(name))
  assert not up, (f"instruct_jax.{name} (layer {LAYERS[_layer(name)][0]!r}) imports "
                  + ", ".join(f"instruct_jax.{t} (layer {LAYERS[_layer(t)][0]!r})" for t in up))


def test_no_import_cycles():
  state: dict[str, int] = {}  # 1: on the current path, 2: done

  def visit(node: str, path: list[str]) -> None:
    state[node] = 1
    for nxt in sorted(GRAPH[node]):
      if state.get(nxt) == 1:
        cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
        raise AssertionError("import cycle: " + " -> ".join(f"instruct_jax.{m}" for m in cycle))
      if nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 2

  for name in sorted(GRAPH):
    if name not in state:
      visit(name, [name])


def test_the_readme_layout_names_every_module():
  """README's layout section lists every module file (so it matches the tree)."""
  text = (ROOT / "README.md").read_text()
  layout = text[text.index("## Layout"):]
  layout = layout[:layout.index("\n## ", 4)] if "\n## " in layout[4:] else layout
  missing = []
  for name, path in MODULES.items():
    if path.name in ("__init__.py", "__main__.py"):
      continue
    if path.name not in layout and path.stem not in layout:
      missing.append(str(path.relative_to(ROOT)))
  assert not missing, f"README's layout section does not mention {missing}"
