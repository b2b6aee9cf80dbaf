"""User errors, and the one-line way every command line reports them.

A `UserError` is a mistake in what the user asked for (a config key, a path, a flag, a checkpoint that does
not fit): the commands print its message on one line, prefixed "error:", and exit with status 2, instead of
a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app
from absl import logging, flags


class UserError(Exception):
  """A problem with the user's input; its message names the file, line, key or flag at fault."""


def write_atomically(file: str | os.PathLike, text: str) -> None:
  """`text` into `file` through a temporary sibling and a rename: readers see the old file or the new one."""
  file = os.fspath(file)
  tmp = file + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, file)


def exit_with(error: BaseException) -> None:
  message = str(error).strip() or type(error).__name__
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def one_line(message: str) -> str:
  """A message that embeds a traceback or a list of attempts, as its first line and its last (the cause)."""
  lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else message
  return f"{lines[0].rstrip(':')}: {lines[-1]}"


def loads_json(text: str | bytes) -> object:
  """`json.loads` for files people write, with what it lets through refused as JSONDecodeErrors (so every reader's
  "file:line: malformed JSON" message covers them): a key repeated in one object (json.loads keeps the last value
  silently) and nesting too deep for Python's parser (a RecursionError otherwise)."""
  if isinstance(text, bytes):
    text = text.decode("utf-8")

  def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) < len(pairs):
      seen: set[str] = set()
      key = next(k for k, _ in pairs if k in seen or seen.add(k))
      raise _DuplicateKey(key)
    return obj

  try:
    return json.loads(text, object_pairs_hook=unique)
  except _DuplicateKey as e:
    key = e.args[0]
    at = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    raise json.JSONDecodeError(f"duplicate key {key!r}", text, at[1] if len(at) > 1 else 0) from None
  except RecursionError:
    raise json.JSONDecodeError("nested too deeply to read (arrays/objects within each other beyond Python's "
                               "recursion limit)", text, 0) from None


class _DuplicateKey(Exception):
  pass


# What a full, over-quota, read-only or forbidden filesystem raises: the environment's fault, reported on one line.
STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                  errno.EFBIG: "File too large", errno.EROFS: "Read-only file system",
                  errno.EACCES: "Permission denied"}
_STORAGE_TEXT = re.compile("|".join(map(re.escape, STORAGE_ERRNOS.values())) + r"|os_error_code='(\d+)'")


def storage_cause(error: BaseException) -> str | None:
  """The storage problem behind `error` (an OSError, or tensorstore's and orbax's wrappers of one, found along
  __cause__ / __context__): "FILE: No space left on device", or None when it is something else."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
      return f"{error.filename}: {STORAGE_ERRNOS[error.errno]}" if error.filename else STORAGE_ERRNOS[error.errno]
    match = _STORAGE_TEXT.search(str(error))
    if match:
      code = match.group(1)
      if code is None:
        return match.group(0)
      if int(code) in STORAGE_ERRNOS:
        return STORAGE_ERRNOS[int(code)]
    error = error.__cause__ or error.__context__
  return None


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path_flags(*names: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Refuses a URL (gs://, s3://, ...) for these flags: they name output written through the local filesystem,
  where "gs://b/run" would silently become a local directory ./gs:/b/run and never reach the bucket."""
  for name in names:
    flags.register_validator(
        name, lambda value: value is None or not _URL.match(str(value)),
        message="a URL is not a local path, and instruct_jax writes only to local filesystems: mount the bucket "
                "(gcsfuse, NFS) and pass the mounted path, e.g. /mnt/bucket/run", flag_values=flag_values)


def _quiet_orbax_threads(record) -> bool:
  """Drops the tracebacks orbax's writer threads log when a save fails: the save's own failure reaches the main
  thread (checkpoint.Checkpointer.save waits for every save) and is reported there, on one line. --verbosity shows
  them."""
  return not (record.levelno < 50 and "raised an exception" in str(record.msg) and
              f"{os.sep}orbax{os.sep}" in (record.pathname or ""))


def _closed_loop_callback(kind, value, tb) -> bool:
  """Whether an exception is the "Event loop is closed" that tensorstore's write callbacks raise (and Python prints as
  unraisable) once a failed orbax save has closed its event loop; that failure is reported by the main thread."""
  frames = traceback.extract_tb(tb)
  return (kind is RuntimeError and str(value) == "Event loop is closed" and bool(frames)
          and frames[0].name == "call_soon_threadsafe" and frames[0].filename.endswith(f"asyncio{os.sep}base_events.py"))


def _quiet_closed_loop_callbacks() -> None:
  previous = sys.unraisablehook

  def hook(unraisable) -> None:
    if _closed_loop_callback(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
      logging.debug("after a failed save: %s", unraisable.exc_value)
    else:
      previous(unraisable)

  sys.unraisablehook = hook


def run(main: Callable[[Sequence[str]], None]) -> None:
  """absl's app.run, reporting UserErrors (also those raised while parsing --config) on one line; warnings and
  errors only in the log unless --verbosity asks for more."""
  def parse(argv: Sequence[str]) -> list[str]:
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # a bad flag value, or a config file whose get_config() raised
      exit_with(UserError(f"{one_line(str(e))} (pass --helpfull for the list of flags)"))
    except OSError as e:  # ml_collections: a --config file that does not exist
      exit_with(UserError(f"--config: {one_line(str(e))}"))
    except (KeyError, AttributeError) as e:  # ml_collections: --config.a.b where a has no b
      exit_with(UserError(f"bad --config override: {one_line(str(e.args[0] if e.args else e))}"))
    except UserError as e:
      exit_with(e)
    return []

  def guarded(argv: Sequence[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # libraries' INFO lines (orbax, jax's backends) only when asked
      logging.set_verbosity(logging.WARNING)
      logging.get_absl_handler().addFilter(_quiet_orbax_threads)
      _quiet_closed_loop_callbacks()
    try:
      main(argv)
    except UserError as e:
      exit_with(e)
    except OSError as e:  # a full or read-only disk under a write of our own: one line naming the file
      if storage_cause(e) is None:
        raise
      exit_with(UserError(storage_cause(e)))

  app.run(guarded, flags_parser=parse)
