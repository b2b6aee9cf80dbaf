"""Sweeps: a grid of config overrides over a base config, each point an ordinary training run.

    python -m instruct_jax.sweep --config configs/ablations/templates.py --workdir /tmp/templates
    python -m instruct_jax.sweep --config FILE --workdir DIR --set total_steps=50   # a quick try of every point
    python -m instruct_jax.sweep --config FILE --workdir DIR --print_commands      # one training command a line
    python -m instruct_jax.sweep --config FILE --workdir DIR --collect_only        # tables and plots only

A sweep config file is a trainer config file (`get_config(arg)`, so `python -m instruct_jax.train --config
FILE` trains the base point) that also has `get_sweep(arg)`, returning a dict (a plain dict keeps the grid's
order; a ConfigDict sorts its keys and refuses dotted ones):

    def get_sweep(arg=None):
      return dict(
          grid={"data.render.num_templates": [1, 2, 4, 8], "seed": [0, 1, 2]},  # first key outermost
          replicate="seed",  # plots average over it; error bars: its standard deviation (ddof=0)
          plots=[dict(x="data.render.num_templates", y=["by_condition/seen_templates/rougeL",
                                                        "by_condition/unseen_templates/rougeL"],
                      file="rougeL_vs_templates.png", title="ROUGE-L by training templates", xscale="log")])

`tokenizer=dict(mixture="builtin", vocab_size=1000, num_examples=20000)` (optional; also `seed`) trains one
SentencePiece model into DIR/tokenizer first (`python -m instruct_jax.data.vocab`, every template style) and
gives it to every point as `--config.tokenizer.path`, so a knob such as the number of templates does not also
change each point's vocabulary.

Every grid key must be a config key; a plot's `y` is a path GROUPING/KEY/METRIC into a point's final evaluation
summary (eval.json's "after"), or a list of them (one line each); other keys: title, xlabel, ylabel, xscale
(linear | log). Each point trains in DIR/<name>, name = `leaf=value` pairs joined by "," (num_templates=1,seed=0),
with `--config.KEY=VALUE` for its grid values and then for every --set. Points run one after another; the
trainer's output goes to DIR/<name>/train.log. A point whose trainer exits 0 gets DIR/<name>/sweep_point.json
and is skipped by a rerun of the same command; an unfinished point is run again (the trainer resumes from its
newest checkpoint). A failed point stops the sweep (exit status 1); SIGTERM is passed on to the running trainer
(which saves a checkpoint) and the sweep exits with the trainer's status. DIR/sweep.json records the grid and
--set of the first start; a rerun with other ones is refused (one directory holds one sweep).

Outputs, once every point ran (or with --collect_only): DIR/results.csv (one row per point, grouping, key and
metric), one PNG per plot, and DIR/plots.json with the numbers drawn, also printed as a table.
`collect(DIR)` does the same from Python (a notebook) and returns them.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import difflib
import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time

from absl import flags

from instruct_jax import configs, errors

PLOT_KEYS = ("x", "y", "file", "title", "xlabel", "ylabel", "xscale")
TOKENIZER_KEYS = ("mixture", "vocab_size", "num_examples", "seed")
TOKENIZER = "tokenizer"  # DIR/tokenizer: the shared tokenizer's directory


@dataclasses.dataclass(frozen=True)
class Sweep:
  grid: dict  # dotted config key -> list of values
  replicate: str | None = None
  plots: tuple = ()  # dicts with every key of PLOT_KEYS; y is a list
  config: str = ""  # FILE[:ARG] of the sweep config file
  tokenizer: dict | None = None  # flags of instruct_jax.data.vocab for one tokenizer shared by every point


# ---------------------------------------------------------------- the sweep config file

def load(config: str) -> Sweep:
  """The sweep of a config file argument ("FILE" or "FILE:ARG"), checked against its base config."""
  path, arg = config.split(":", 1) if ":" in config else (config, None)
  base = configs.load(path, arg)
  spec = importlib.util.spec_from_file_location(f"_sweep_{os.path.basename(path)[:-3]}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _need(hasattr(module, "get_sweep"), f"{path} defines no get_sweep() (see python -m instruct_jax.sweep --help)")
  try:
    spec = module.get_sweep(arg) if arg is not None else module.get_sweep()
  except (ValueError, TypeError, KeyError, AttributeError) as e:
    hint = "; a ConfigDict refuses dotted keys: return a plain dict(grid={...}, ...)" if "dots" in str(e) else ""
    raise errors.UserError(f"{path}: get_sweep() failed: {errors.one_line(str(e))}{hint}") from None
  for key in sorted(set(spec.keys()) - {"grid", "replicate", "plots", "tokenizer"}):
    print(f"note: {path}: get_sweep() returns {key!r}, which the sweep does not use", file=sys.stderr, flush=True)
  return check(spec, config=config, known=configs.leaves(base))


def _need(ok, message: str) -> None:
  if not ok:
    raise errors.UserError(message)


def check(spec, *, config: str = "", known: dict | None = None) -> Sweep:
  """A Sweep from get_sweep's dict (or ConfigDict); `known`: the base config's leaves, to check the grid keys."""
  spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
  grid = spec.get("grid")
  _need(isinstance(grid, dict) and grid, "get_sweep(): 'grid' must be a non-empty dict {config key: values}")
  grid = {key: list(values) if isinstance(values, (list, tuple)) else values for key, values in grid.items()}
  for key, values in grid.items():
    if known is not None and key not in known and not key.startswith(tuple(m + "." for m in configs.OPEN_MAPS)):
      close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
      hint = f"; did you mean {close[0]}?" if close else " (every key: instruct_jax/configs.py base())"
      raise errors.UserError(f"sweep grid key {key}: no such config key{hint}")
    _need(isinstance(values, list) and values, f"sweep grid key {key}: expected a non-empty list, got {values!r}")
    _need(None not in values, f"sweep grid key {key}: None cannot be passed as --config.{key}; give a value")
  names = [name for name, _ in points(grid)]
  _need(len(set(names)) == len(names), f"sweep grid: points share a directory name ({names}); make values distinct")
  replicate = spec.get("replicate")
  _need(replicate is None or replicate in grid, f"sweep replicate {replicate!r} is not a grid key ({list(grid)})")
  plots = [_check_plot(dict(plot), grid, replicate) for plot in spec.get("plots") or ()]
  _need(len({p["file"] for p in plots}) == len(plots), "sweep plots: two plots write the same file")
  tokenizer = spec.get("tokenizer")
  if tokenizer is not None:
    tokenizer = dict(tokenizer)
    _need("mixture" in tokenizer and set(tokenizer) <= set(TOKENIZER_KEYS),
          f"sweep tokenizer: keys {sorted(tokenizer)}; it needs mixture and may have {TOKENIZER_KEYS}")
    _need(not any(k.startswith("tokenizer.") for k in grid), "sweep grid: tokenizer keys with a shared tokenizer")
  return Sweep(grid=grid, replicate=replicate, plots=tuple(plots), config=config, tokenizer=tokenizer)


def _check_plot(plot: dict, grid: dict, replicate: str | None) -> dict:
  """The plot with every key of PLOT_KEYS filled in, and y as a list."""
  name = plot.get("file", "?")
  _need({"x", "y", "file"} <= set(plot) <= set(PLOT_KEYS),
        f"sweep plot {name}: keys {sorted(plot)}; it needs x, y and file, and may have {PLOT_KEYS}")
  _need(plot["x"] in grid and plot["x"] != replicate,
        f"sweep plot {name}: x {plot['x']!r} is not a grid key other than the replicate (grid: {list(grid)})")
  _need(str(name).endswith(".png") and os.sep not in str(name), f"sweep plot {name}: file must be a PNG name")
  ys = [plot["y"]] if isinstance(plot["y"], str) else list(plot["y"])
  for y in ys:
    _need(isinstance(y, str) and len(y.split("/")) >= 3, f"sweep plot {name}: y {y!r} is not GROUPING/KEY/METRIC")
  xscale = plot.get("xscale") or "linear"
  _need(xscale in ("linear", "log"), f"sweep plot {name}: xscale {xscale!r}; expected linear or log")
  _need(xscale == "linear" or all(_number(v) and v > 0 for v in grid[plot["x"]]),
        f"sweep plot {name}: xscale log needs positive numbers for {plot['x']}")
  ylabel = ys[0] if len(ys) == 1 else ys[0].split("/")[-1]
  return dict(x=plot["x"], y=ys, file=name, title=plot.get("title") or "", xscale=xscale,
              xlabel=plot.get("xlabel") or plot["x"], ylabel=plot.get("ylabel") or ylabel)


def _number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- points and their commands

def _labels(grid: dict) -> dict[str, str]:
  """Grid key -> its name in directory names: the last component, or the whole key where two share it."""
  leaf = {key: key.rsplit(".", 1)[-1] for key in grid}
  return {key: name if list(leaf.values()).count(name) == 1 else key for key, name in leaf.items()}


def point_name(overrides: dict, labels: dict[str, str]) -> str:
  """E.g. "num_templates=1,seed=0"; a tuple's items are joined by "-"; other than [A-Za-z0-9._+-] becomes "_"."""
  text = {k: "-".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for k, v in overrides.items()}
  return ",".join(f"{labels[k]}={re.sub(r'[^A-Za-z0-9._+-]', '_', v)}" for k, v in text.items())


def points(grid: dict) -> list[tuple[str, dict]]:
  """(name, {key: value}) of every point, the cartesian product with the first key outermost."""
  labels, every = _labels(grid), [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
  return [(point_name(overrides, labels), overrides) for overrides in every]


def command(sweep: Sweep, workdir: str, name: str, overrides: dict, extra=()) -> list[str]:
  """The training command of one point; `extra`: --set's KEY=VALUE strings, after the point's own values."""
  values = {k: str(tuple(v)) if isinstance(v, (list, tuple)) else str(v) for k, v in overrides.items()}
  shared = [f"--config.tokenizer.path={os.path.join(workdir, TOKENIZER)}"] if sweep.tokenizer else []
  return [sys.executable, "-m", "instruct_jax.train", f"--config={sweep.config}",
          f"--workdir={os.path.join(workdir, name)}", *[f"--config.{k}={v}" for k, v in values.items()],
          *shared, *[f"--config.{s}" for s in extra]]


def tokenizer_command(sweep: Sweep, out: str) -> list[str]:
  """The command that trains the shared tokenizer into `out`."""
  return [sys.executable, "-m", "instruct_jax.data.vocab", *[f"--{k}={v}" for k, v in sweep.tokenizer.items()],
          f"--out={out}"]


def check_commands(sweep: Sweep, commands: dict[str, list[str]], extra=()) -> None:
  """Parses every point's command as the trainer will, so a bad value fails now and not at point 7."""
  for text in extra:
    _need("=" in text and not text.startswith("-"), f"--set {text}: expected KEY=VALUE, e.g. --set total_steps=50")
    _need(text.split("=", 1)[0] not in sweep.grid, f"--set {text}: {text.split('=', 1)[0]} is a grid key")
  for name, cmd in commands.items():
    try:
      configs.from_command_line(cmd[3:])
    except (errors.UserError, flags.Error, KeyError, AttributeError, ValueError, OSError) as e:
      raise errors.UserError(f"point {name}: {errors.one_line(str(e))}") from None


# ---------------------------------------------------------------- running

def _write_json(path: str, blob) -> None:
  """Written whole or not at all (a temporary file, then os.replace)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(blob, f, indent=1)
    f.write("\n")
  os.replace(tmp, path)


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def check_record(workdir: str, sweep: Sweep, extra=(), *, write: bool = False) -> None:
  """Refuses (UserError) a grid or --set other than DIR/sweep.json's; `write`: record them there if absent."""
  record = json.loads(json.dumps(dict(config=sweep.config, grid=sweep.grid, replicate=sweep.replicate,
                                     plots=list(sweep.plots), set=list(extra),
                                     tokenizer=sweep.tokenizer)))  # tuples as lists, as stored
  path = os.path.join(workdir, "sweep.json")
  if not os.path.exists(path):
    if write:
      os.makedirs(workdir, exist_ok=True)
      _write_json(path, {**record, "started": _now()})
    return
  with open(path) as f:
    old = json.load(f)
  diffs = [f"grid key {k}: {old['grid'].get(k, 'absent')} then, {record['grid'].get(k, 'absent')} now"
           for k in dict.fromkeys([*old["grid"], *record["grid"]]) if old["grid"].get(k) != record["grid"].get(k)]
  if old.get("set", []) != record["set"]:
    diffs.append(f"--set: {old.get('set', [])} then, {record['set']} now")
  if old.get("tokenizer") != record["tokenizer"]:
    diffs.append(f"tokenizer: {old.get('tokenizer')} then, {record['tokenizer']} now")
  _need(not diffs, f"{path} holds another sweep ({'; '.join(diffs)}); give this one its own --workdir")


def _run_logged(cmd: list[str], log: str) -> tuple[int, bool]:
  """Runs `cmd` with its output appended to `log`; a SIGTERM meanwhile is passed on. (status, got SIGTERM)."""
  got, proc = [], None
  def forward(signum, frame):
    del frame
    got.append(signum)
    if proc is not None:
      proc.send_signal(signal.SIGTERM)
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    with open(log, "a") as f:
      f.write(f"# {_now()} sweep runs: {shlex.join(cmd)}\n")
      f.flush()
      proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    if got:  # it came before there was a trainer to tell
      proc.send_signal(signal.SIGTERM)
    status = proc.wait()
  finally:
    signal.signal(signal.SIGTERM, previous)
  return status, bool(got)


def _fail(head: str, status: int, log: str) -> None:
  with open(log, errors="replace") as f:
    tail = f.read().splitlines()[-3:]
  cause = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
  print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
  print(f"error: {head}: {cause}; see {log}", file=sys.stderr, flush=True)
  sys.exit(1)


def shared_tokenizer(sweep: Sweep, workdir: str) -> None:
  """Trains DIR/tokenizer once (into a temporary directory, then renamed: never half a tokenizer)."""
  out = os.path.join(workdir, TOKENIZER)
  if os.path.isdir(out):
    print(f"tokenizer {out}: done, skipped", flush=True)
    return
  tmp, log = out + ".tmp", os.path.join(workdir, "tokenizer.log")
  shutil.rmtree(tmp, ignore_errors=True)
  print(f"tokenizer {out}: training (log: {log})", flush=True)
  status, terminated = _run_logged(tokenizer_command(sweep, tmp), log)
  if terminated:
    sys.exit(128 + signal.SIGTERM)
  if status != 0:
    _fail("the shared tokenizer", status, log)
  os.replace(tmp, out)


def run(sweep: Sweep, workdir: str, extra=()) -> None:
  """Trains every point not yet done, one after another; exits on a failed or SIGTERMed point."""
  if sweep.tokenizer:
    shared_tokenizer(sweep, workdir)
  todo = points(sweep.grid)
  for i, (name, overrides) in enumerate(todo, 1):
    head, point_dir = f"point {i}/{len(todo)} {name}", os.path.join(workdir, name)
    done = os.path.join(point_dir, "sweep_point.json")
    if os.path.exists(done):
      print(f"{head}: done, skipped", flush=True)
      continue
    os.makedirs(point_dir, exist_ok=True)
    log, cmd = os.path.join(point_dir, "train.log"), command(sweep, workdir, name, overrides, extra)
    print(f"{head}: running (log: {log})", flush=True)
    start = time.time()
    status, terminated = _run_logged(cmd, log)
    seconds = time.time() - start
    if status == 0:
      _write_json(done, dict(overrides=overrides, command=cmd, seconds=round(seconds, 1), finished=_now()))
      print(f"{head}: done in {seconds:.0f} s", flush=True)
    if terminated:
      print(f"{head}: SIGTERM passed on; the trainer exited with status {status} (rerun the same command to "
            "resume)", file=sys.stderr, flush=True)
      sys.exit(128 - status if status < 0 else status or 128 + signal.SIGTERM)
    if status != 0:
      _fail(f"{head}: the trainer", status, log)


# ---------------------------------------------------------------- results

@dataclasses.dataclass
class Results:
  rows: list[dict]  # point, each grid key, step, grouping, key, metric, value
  plots: dict  # {file: {series label: [{x, mean, std, n, values}]}}, as plots.json holds it
  missing: list[str]  # points without eval.json


def collect(sweep_dir: str, sweep: Sweep | dict | None = None) -> Results:
  """Reads every point's eval.json; writes results.csv, the plots and plots.json into `sweep_dir`.

  `sweep`: the Sweep (or get_sweep's dict); default: the one DIR/sweep.json recorded. Plot points are means
  over the replicate key; std is the population standard deviation (ddof=0), None for fewer than 2 values.
  """
  if sweep is None:
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
      sweep = json.load(f)
  sweep = sweep if isinstance(sweep, Sweep) else check(sweep)
  rows, found, missing = [], {}, []
  for name, overrides in points(sweep.grid):
    path = os.path.join(sweep_dir, name, "eval.json")
    if not os.path.exists(path):
      missing.append(name)
      continue
    with open(path) as f:
      blob = json.load(f)
    for grouping, table in (blob.get("after") or {}).items():
      for key, metrics in table.items():
        for metric, value in metrics.items():
          rows.append(dict(point=name, **overrides, step=blob.get("step"), grouping=grouping, key=key,
                           metric=metric, value=value))
          found[name, f"{grouping}/{key}/{metric}"] = value
  _need(len(missing) < len(points(sweep.grid)), f"no point of the sweep in {sweep_dir} has an eval.json yet")
  if missing:
    print(f"warning: {len(missing)} point(s) have no eval.json and are left out: {', '.join(missing)}",
          flush=True)
  with open(os.path.join(sweep_dir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, ["point", *sweep.grid, "step", "grouping", "key", "metric", "value"])
    writer.writeheader()
    writer.writerows(rows)
  drawn = {plot["file"]: _plot_data(sweep, plot, found) for plot in sweep.plots}
  for plot in sweep.plots:
    _draw(os.path.join(sweep_dir, plot["file"]), sweep, plot, drawn[plot["file"]])
  _write_json(os.path.join(sweep_dir, "plots.json"), drawn)
  return Results(rows=rows, plots=drawn, missing=missing)


def _plot_data(sweep: Sweep, plot: dict, found: dict) -> dict[str, list[dict]]:
  """{series label: [{x, mean, std, n, values}]}: one series per y and per value of the other grid keys."""
  paths = sorted({path for _, path in found})
  for y in plot["y"]:
    if y not in paths:
      close = difflib.get_close_matches(y, paths, n=1, cutoff=0.5)
      raise errors.UserError(f"sweep plot {plot['file']}: y {y} is in no point's eval.json"
                             + (f"; did you mean {close[0]}?" if close else ""))
  labels, x, rep = _labels(sweep.grid), plot["x"], sweep.replicate
  others = [k for k in sweep.grid if k not in (x, rep)]
  out = {}
  for y, combo in itertools.product(plot["y"], itertools.product(*(sweep.grid[k] for k in others))):
    label = ", ".join(([y] if len(plot["y"]) > 1 else []) + [f"{labels[k]}={v}" for k, v in zip(others, combo)])
    series = []
    for x_value in sweep.grid[x]:
      values = []
      for rep_value in sweep.grid[rep] if rep else [None]:
        overrides = {x: x_value, **dict(zip(others, combo)), **({rep: rep_value} if rep else {})}
        value = found.get((point_name({k: overrides[k] for k in sweep.grid}, labels), y))
        if value is not None:
          values.append(value)
      if values:
        series.append(dict(x=x_value, mean=statistics.fmean(values), n=len(values), values=values,
                           std=statistics.pstdev(values) if len(values) >= 2 else None))
    out[label or y] = series
  return out


def _draw(path: str, sweep: Sweep, plot: dict, data: dict[str, list[dict]]) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  xs = sweep.grid[plot["x"]]
  where = (lambda v: v) if all(map(_number, xs)) else xs.index  # categories at 0, 1, 2, ...
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, series in data.items():
    ax.errorbar([where(p["x"]) for p in series], [p["mean"] for p in series], capsize=3, marker="o", label=label,
                yerr=[p["std"] or 0.0 for p in series])
  ax.set_xscale(plot["xscale"])
  ax.set_xticks([where(v) for v in xs], [str(v) for v in xs])
  ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
  rep = f" (mean ± std over {sweep.replicate})" if sweep.replicate else ""
  ax.set(xlabel=plot["xlabel"], ylabel=plot["ylabel"])
  ax.set_title(textwrap.fill((plot["title"] + rep).strip(), 60), fontsize="medium")  # long titles wrap
  ax.grid(alpha=0.3)
  if len(data) > 1:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def format_table(drawn: dict) -> str:
  """The numbers of plots.json as text: one block per plot file, one line per series and x."""
  lines = []
  for file, data in drawn.items():
    width = max([len(label) for label in data] + [6])
    lines += [f"{file}:", f"  {'series':<{width}}  {'x':>10}  {'mean':>8}  {'std':>8}  {'n':>3}"]
    for label, series in data.items():
      lines += [f"  {label:<{width}}  {str(p['x']):>10}  {p['mean']:>8.2f}  "
                f"{'-' if p['std'] is None else format(p['std'], '.2f'):>8}  {p['n']:>3}" for p in series]
  return "\n".join(lines)


# ---------------------------------------------------------------- command line

def _define_flags() -> None:
  flags.DEFINE_string("config", None, "Sweep config file FILE[:ARG] (get_config and get_sweep).")
  flags.DEFINE_string("workdir", None, "Sweep directory: one subdirectory per point, results and plots.")
  errors.local_path_flags("workdir")
  flags.DEFINE_bool("print_commands", False, "Print each point's training command (shell-quoted) and exit.")
  flags.DEFINE_bool("collect_only", False, "Run nothing: collect results.csv, plots and plots.json.")
  flags.DEFINE_multi_string("set", [], "KEY=VALUE override for every point (passed as --config.KEY=VALUE); "
                            "repeatable, e.g. --set total_steps=50 --set eval.num_examples=5.")


def main(argv):
  f = flags.FLAGS
  _need(len(argv) == 1, f"unexpected arguments: {argv[1:]}")
  _need(f.config and f.workdir, "--config and --workdir are required (e.g. --config configs/ablations/templates.py)")
  _need(not (f.print_commands and f.collect_only), "--print_commands and --collect_only: give one")
  sweep, extra = load(f.config), list(f["set"].value)
  commands = {name: command(sweep, f.workdir, name, overrides, extra) for name, overrides in points(sweep.grid)}
  check_commands(sweep, commands, extra)
  check_record(f.workdir, sweep, extra, write=not (f.print_commands or f.collect_only))
  if f.print_commands:
    first = [tokenizer_command(sweep, os.path.join(f.workdir, TOKENIZER))] if sweep.tokenizer else []
    print("\n".join(shlex.join(cmd) for cmd in [*first, *commands.values()]))
    return
  if not f.collect_only:
    run(sweep, f.workdir, extra)
  results = collect(f.workdir, sweep)
  if results.plots:
    print(format_table(results.plots))
  print(f"wrote {os.path.join(f.workdir, 'results.csv')} ({len(results.rows)} rows), plots.json and "
        f"{len(sweep.plots)} plot(s) to {f.workdir}", flush=True)


if __name__ == "__main__":
  _define_flags()
  errors.run(main)
