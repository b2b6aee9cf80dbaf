"""Executes colabs/quickstart.ipynb the way Jupyter would, with the tiny config and a few steps."""
import base64
import importlib.util
import os
import pathlib
import re

import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "colabs" / "quickstart.ipynb"
STEPS = 10
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _outputs(nb) -> tuple[str, list[bytes]]:
  """All text the notebook printed, and the PNG images it displayed."""
  text, images = [], []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        text.append(out.text)
      elif out.output_type in ("display_data", "execute_result"):
        text.append(out.data.get("text/plain", ""))
        if "image/png" in out.data:
          images.append(base64.b64decode(out.data["image/png"]))
  return "\n".join(text), images


def test_notebook_matches_its_builder():
  spec = importlib.util.spec_from_file_location("build_quickstart", ROOT / "colabs" / "build_quickstart.py")
  builder = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(builder)
  stored = nbformat.read(NOTEBOOK, as_version=4)
  built = builder.build()
  assert [(c.cell_type, c.source) for c in stored.cells] == [(c.cell_type, c.source) for c in built.cells], (
      "colabs/quickstart.ipynb differs from colabs/build_quickstart.py; run `python colabs/build_quickstart.py`")
  assert all(not c.get("outputs") for c in stored.cells), "commit the notebook without outputs"


@pytest.mark.slow  # 20-30 s; the quickstart's trainer path is the default suite's (tests/test_train.py)
def test_quickstart_notebook_trains_and_plots(tmp_path):
  workdir = tmp_path / "workdir"
  env = dict(os.environ, QUICKSTART_TINY="1", QUICKSTART_STEPS=str(STEPS), QUICKSTART_WORKDIR=str(workdir),
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("INSTRUCT_JAX_ROOT", None)  # the notebook must find the checkout next to itself
  env.pop("MPLBACKEND", None)  # the kernel's own (inline) backend, as in Jupyter and Colab
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                   resources={"metadata": {"path": str(NOTEBOOK.parent)}})
  client.execute(env=env)

  text, images = _outputs(nb)
  # The install cell found this checkout and skipped pip (instruct_jax was importable).
  assert f"instruct_jax from {ROOT / 'instruct_jax'}" in text
  # The rate table (task, rate, realised share) holds the 15 training tasks, none of the "check" cluster.
  rates = [line.split()[0] for line in text.splitlines() if re.fullmatch(r"builtin/\w+ +[\d.]+ +[\d.]+", line)]
  assert len(rates) == 15 and "builtin/sort_ascending" in rates and "builtin/contains" not in rates, rates
  assert f"final step: {STEPS}" in text
  # The before -> after table, with every condition.
  assert "exact match" in text and "ROUGE-L" in text
  for condition in ("seen_templates", "unseen_templates", "held_out_cluster"):
    assert any(line.startswith(condition) and "->" in line for line in text.splitlines()), condition
  # A figure was displayed and saved.
  assert images and all(image.startswith(PNG_MAGIC) for image in images)
  saved = workdir / "per_cluster.png"
  assert saved.read_bytes().startswith(PNG_MAGIC)
  assert (workdir / "predictions.jsonl").is_file() and (workdir / "eval.json").is_file()
