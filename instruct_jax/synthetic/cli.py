"""Flags and entry-point helpers shared by the synthetic-data commands.

Every command (`python -m instruct_jax.synthetic.<method>`, and `instruct_jax.evals.judge`) uses absl
flags, defined with underscores; `main` also accepts the dashed spellings (`--base-url`,
`--num-instructions`, `--no-progress`) by rewriting them before absl parses the command line, and
reports user errors (a missing flag, a bad workdir) on one line with exit status 2 (`errors.run`).

absl's `--help` lists only the main module's flags: each method module adopts this module's flags
(`flags.adopt_module_key_flags(cli)`) so that its `--help` shows them too.

Backends: `--backend openai --base_url URL --model NAME` (an OpenAI-compatible server), or
`--backend model --workdir W [--step N]` (a trained instruct_jax workdir decoded here with the KV
cache, `--model_batch_size` prompts at a time; see `ModelBackend.from_workdir`).
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from instruct_jax import errors
from instruct_jax.lm.backends import Backend, BackendError
from instruct_jax.lm.openai import OpenAIBackend
from instruct_jax.synthetic.runner import Tally

OUT = flags.DEFINE_string("out", None, "Output directory. Re-use it to resume or extend a run.")
errors.local_path_flags("out")
BACKEND = flags.DEFINE_enum("backend", "openai", ["openai", "model"],
                            "Language-model backend: openai (an OpenAI-compatible server: --base_url, "
                            "--model) or model (a trained instruct_jax workdir: --workdir).")
BASE_URL = flags.DEFINE_string("base_url", None,
                               "OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
MODEL = flags.DEFINE_string("model", None, "Model name sent to the server and kept in provenance.")
API_KEY_ENV = flags.DEFINE_string("api_key_env", "OPENAI_API_KEY",
                                  "Environment variable holding the API key (never logged or "
                                  "stored); unset means no Authorization header.")
WORKDIR = flags.DEFINE_string("workdir", None, "With --backend model: the workdir written by "
                              "instruct_jax.train whose model answers.")
STEP = flags.DEFINE_integer("step", None, "With --backend model: checkpoint step of --workdir "
                            "(default: the newest).")
INIT_FROM = flags.DEFINE_string("init_from", None, "With --backend model: a checkpoint before fine-tuning (an imported "
                                "or Hugging Face directory) answers instead, as a baseline (--workdir: its settings).")
MODEL_BATCH_SIZE = flags.DEFINE_integer("model_batch_size", 16, "With --backend model: prompts "
                                        "decoded together.")
CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Requests in flight at once.", lower_bound=1)
TIMEOUT = flags.DEFINE_float("timeout", 120.0, "Deadline in seconds for each whole request (connect, send, the "
                              "full answer); a request past it is retried like a lost connection.")
MAX_RETRIES = flags.DEFINE_integer("max_retries", 6, "Retries on 408/429/5xx/timeouts.", lower_bound=0)
BACKOFF = flags.DEFINE_float("backoff", 1.0, "First retry delay in seconds (doubles each retry).")
for _flag in ("timeout", "backoff"):
  flags.register_validator(_flag, lambda v: v is not None and math.isfinite(v) and v >= 0,
                           message="must be a finite number of seconds >= 0")
NUM_INSTRUCTIONS = flags.DEFINE_integer(
    "num_instructions", None, "Target size; what it counts depends on the method (see its "
    "docstring). A larger value in the same --out continues the run.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for every random choice of the run.")
PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")

# The flags that choose and configure a backend (for commands that declare them key flags one by one).
BACKEND_FLAGS = ("backend", "base_url", "model", "api_key_env", "concurrency", "timeout",
                 "max_retries", "backoff", "workdir", "step", "init_from", "model_batch_size")


def normalize_argv(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Rewrites `--dashed-name[=v]` to `--dashed_name[=v]` (and `--no-x-y` to `--nox_y`) for
  defined flags; everything after a bare `--` is left alone."""
  out = [argv[0]] if argv else []
  rest = list(argv[1:])
  while rest:
    arg = rest.pop(0)
    if arg == "--":
      out += [arg] + rest
      break
    if arg.startswith("--") and "-" in arg[2:].split("=", 1)[0]:
      name, eq, value = arg[2:].partition("=")
      under = name.replace("-", "_")
      if under in flag_values:
        arg = f"--{under}{eq}{value}"
      elif under.startswith("no_") and under[3:] in flag_values:
        arg = f"--no{under[3:]}{eq}{value}"
    out.append(arg)
  return out


def require(value: Any, flag: str) -> Any:
  if value is None or value == "":
    raise errors.UserError(f"--{flag} is required")
  return value


def require_positive(value: int | None, flag: str) -> int:
  require(value, flag)
  if value < 1:
    raise errors.UserError(f"--{flag} must be >= 1, got {value}")
  return value


def build_backend(model: str | None = None, base_url: str | None = None,
                  workdir: str | None = None) -> Backend:
  """The backend named by --backend, from the shared flags (overridable model and URL for openai,
  workdir for model)."""
  if BACKEND.value == "openai":
    try:
      return OpenAIBackend(require(base_url or BASE_URL.value, "base_url"),
                           require(model or MODEL.value, "model"), api_key_env=API_KEY_ENV.value,
                           concurrency=CONCURRENCY.value, timeout_s=TIMEOUT.value,
                           max_retries=MAX_RETRIES.value, backoff_s=BACKOFF.value)
    except ValueError as e:
      raise errors.UserError(str(e)) from None
  if BACKEND.value == "model":
    init_from = INIT_FROM.value
    path = workdir or WORKDIR.value if init_from else require(workdir or WORKDIR.value, "workdir")
    for flag, value in (("workdir", path), ("init_from", init_from)):
      if value and not os.path.isdir(value):  # before jax is imported: a typo fails at once
        raise errors.UserError(f"--{flag} {value}: no such directory")
    from instruct_jax.lm import model  # pylint: disable=g-import-not-at-top  (jax and the model: only when used)
    return model.ModelBackend.from_workdir(path, step=STEP.value, init_from=init_from, batch_size=require_positive(
        MODEL_BATCH_SIZE.value, "model_batch_size"))
  raise errors.UserError(f"unknown --backend {BACKEND.value!r}")


def print_report(report: dict[str, Any]) -> None:
  tally = Tally()
  for stage, reasons in report["counts"].items():
    for reason, n in reasons.items():
      tally.add(stage, reason, n)
  print(f"{report['method']}: {report['records_total']} records in {report['output']} "
        f"({report['records_new']} new this run; {report['cache_hits']} requests answered from "
        f"the cache, {report['cache_misses']} sent)")
  print(tally.format())


def main(fn: Callable[[list[str]], None]) -> None:
  """absl.app.run with dashed flag spellings accepted and user errors reported on one line."""
  sys.argv = normalize_argv(sys.argv)

  def reported(argv: list[str]) -> None:
    try:
      fn(argv)
    except BackendError as e:  # a server that failed for good (a redirect, a cap, retries exhausted): one line
      raise errors.UserError(str(e)) from None

  errors.run(reported)
