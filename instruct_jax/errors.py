"""User errors, and the one-line way every command line reports them.

A `UserError` is a mistake in what the user asked for (a config key, a path, a flag, a checkpoint that does
not fit): the commands print its message on one line, prefixed "error:", and exit with status 2, instead of
a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import logging, flags


class UserError(Exception):
  """A problem with the user's input; its message names the file, line, key or flag at fault."""


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


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path_flags(*names: str, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Refuses a URL (gs://, s3://, ...) for these flags: they name output written through the local filesystem,
  where "gs://b/run" would silently become a local directory ./gs:/b/run and never reach the bucket."""
  for name in names:
    flags.register_validator(
        name, lambda value: value is None or not _URL.match(str(value)),
        message="a URL is not a local path, and instruct_jax writes only to local filesystems: mount the bucket "
                "(gcsfuse, NFS) and pass the mounted path, e.g. /mnt/bucket/run", flag_values=flag_values)


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
    try:
      main(argv)
    except UserError as e:
      exit_with(e)

  app.run(guarded, flags_parser=parse)
