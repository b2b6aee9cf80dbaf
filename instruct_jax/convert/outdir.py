"""Output directories of the converters: written whole or not at all, never mixed with older files.

Every export and import writes into a temporary sibling of its destination, `.<name>.partial-<pid>`, and renames
it into place only once everything is written, so a reader never sees half an export and a killed one leaves a
directory whose name says what it is. A destination that already holds files is replaced whole when it is an
earlier output of ours (it holds `instruct_jax_export.json`, which records what wrote it) and refused otherwise:
new shards beside an older `model.safetensors` would be loaded as the old model.

The tokenizer files an import copies are checked on the way: a file that is a link to somewhere outside the
source directory is refused (a Hugging Face cache snapshot's links into its own `blobs/` are fine), and each
file must read as what its name says (a SentencePiece model, a `tokenizers` JSON file, JSON objects, a template).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import shutil
from collections.abc import Iterator

from instruct_jax import errors
from instruct_jax.convert.tensors import ConversionError

MARKER = "instruct_jax_export.json"


def check_destination(dst: str | os.PathLike) -> pathlib.Path:
  """`dst` as an absolute path, if it may be written: absent, empty, or an earlier output of ours."""
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and not dst.is_dir():
    raise ConversionError(f"--dst {dst} is a file, not a directory")
  if dst.is_dir() and any(dst.iterdir()) and not (dst / MARKER).is_file():
    raise ConversionError(f"--dst {dst} already holds files and is not an earlier output of instruct_jax.convert "
                          f"(no {MARKER}): refusing to write beside them; pass a new or empty directory")
  return dst


@contextlib.contextmanager
def replacing(dst: str | os.PathLike, **provenance) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary directory beside `dst`; when the block ends without an error, it becomes `dst`
  (replacing an earlier output of ours whole). On an error the temporary directory is removed."""
  dst = check_destination(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  partial = dst.parent / f".{dst.name}.partial-{os.getpid()}"
  if partial.exists():  # left by an earlier process with this pid
    shutil.rmtree(partial)
  partial.mkdir()
  try:
    yield partial
    record = {"written_by": "instruct_jax.convert", **provenance,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    (partial / MARKER).write_text(json.dumps(record, indent=2, default=str) + "\n")
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)  # the error that got us here is the one to report
    raise
  if dst.exists():
    replaced = dst.parent / f".{dst.name}.replaced-{os.getpid()}"
    os.rename(dst, replaced)
    os.rename(partial, dst)
    shutil.rmtree(replaced)
  else:
    os.rename(partial, dst)


def _inside(path: pathlib.Path, directory: pathlib.Path) -> bool:
  return path == directory or directory in path.parents


def checked_source_file(src: str | os.PathLike, name: str) -> pathlib.Path | None:
  """src/name if it is a file that stays inside `src` once links are followed (None when absent)."""
  src = pathlib.Path(src).absolute()
  path = src / name
  if not path.exists() and not path.is_symlink():
    return None
  target = path.resolve()
  home = src.resolve()
  hub_blobs = home.parent.parent / "blobs" if home.parent.name == "snapshots" else None
  if not (_inside(target, home) or (hub_blobs is not None and _inside(target, hub_blobs))):
    raise ConversionError(f"{path} is a link to {target}, outside {src}: refusing to copy it (copy the real file "
                          "into the checkpoint directory if it belongs there)")
  if not target.is_file():
    raise ConversionError(f"{path} is not a regular file")
  return path


def validate_tokenizer_file(path: pathlib.Path) -> None:
  """Raises ConversionError unless `path` reads as the kind of tokenizer file its name says."""
  name = path.name
  try:
    if name.endswith(".model"):
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
      spm.SentencePieceProcessor(model_file=str(path))
    elif name == "tokenizer.json":
      import tokenizers  # pylint: disable=g-import-not-at-top
      tokenizers.Tokenizer.from_str(path.read_text(encoding="utf-8"))
    elif name.endswith(".json"):
      if not isinstance(errors.loads_json(path.read_text(encoding="utf-8")), dict):
        raise ValueError("expected a JSON object")
    elif name.endswith(".jinja"):
      import jinja2  # pylint: disable=g-import-not-at-top
      jinja2.Environment().parse(path.read_text(encoding="utf-8"))
  except Exception as e:  # pylint: disable=broad-except  (sentencepiece and tokenizers raise plain exceptions)
    raise ConversionError(f"{path}: not a valid {name} ({errors.one_line(str(e)) or type(e).__name__})") from None
