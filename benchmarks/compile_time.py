"""Compile time and XLA's per-device memory plan of the shipped configs' state init and train step.

    python benchmarks/compile_time.py                                   # every shipped config, as shipped
    python benchmarks/compile_time.py --scan both recipes/flan_t5.py:large decoder_llama.py:7b
    python benchmarks/compile_time.py --flag=--config.num_microbatches=8 recipes/flan_t5.py:base

Runs `python -m instruct_jax.train --config configs/C --dry_run --compile` (instruct_jax/aot.py) for each config
in a process of its own and tabulates what it prints: seconds to lower + compile the sharded state init and the
train step at the config's real model, mesh and batch, and the most memory the step's plan holds per device.
With `--scan both` each config also runs with config.model.scan_layers flipped. Every run gets a CPU stand-in
mesh of the devices the config's mesh fixes (JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count),
also on a GPU host; `--no_stand_in` compiles on the machine's own devices instead (a GPU or TPU host with enough
of them). Data the configs name need not exist: the compile does not read it (a dry run's data problems are
counted, not fatal here).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUPERNI = ROOT.parent / "shared" / "data" / "natural-instructions"
# config (relative to configs/) -> the flags its docstring asks a user to add; base.py and finetune.py name
# no model of their own (a size on the command line, a checkpoint) and are left out.
SHIPPED = {
    "quickstart.py": [], "quickstart.py:decoder": [], "tiny.py": [], "tiny.py:decoder": [],
    **{f"recipes/flan_t5.py:{s}": [f"--config.data_paths.superni_dir={SUPERNI}"]
       for s in ("small", "base", "large", "xl", "xxl")},
    **{f"flan2021.py:{s}": ["--config.eval.held_out_cluster=nli"] for s in ("small", "base", "large", "xl", "xxl")},
    "decoder_llama.py:1b": [], "decoder_llama.py:7b": [],
    "recipes/alpaca.py": [], "recipes/wizardlm.py": [], "recipes/openorca.py": [],
}
_PROGRAM = re.compile(r"^\s+(state init|train step): lowered in ([\d.]+) s, compiled in ([\d.]+) s;.* at most "
                      r"([\d.]+) GiB at once", re.M)


def mesh_devices(name: str, extra: list[str]) -> tuple[int, bool]:
  """(devices the config's mesh fixes, its scan_layers) read from the config with the `extra` overrides."""
  from instruct_jax import configs  # pylint: disable=g-import-not-at-top  (only the parent process needs it)
  c = configs.from_command_line([f"--config={ROOT / 'configs' / name}", *extra])
  need = 1
  for v in dict(c.mesh).values():
    need *= max(v, 1)
  return need, bool(c.model.scan_layers)


def run_one(name: str, scan: bool | None, stand_in: bool, timeout: float, extra: list[str]) -> dict:
  need, shipped_scan = mesh_devices(name, extra)
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={ROOT / 'configs' / name}", *SHIPPED.get(name, []),
         *extra, "--dry_run", "--compile"]
  if scan is not None:
    cmd.append(f"--config.model.scan_layers={scan}")
  env = dict(os.environ)
  if stand_in:
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={max(need, 1)}".strip()
    env["JAX_PLATFORMS"] = "cpu"
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
  except subprocess.TimeoutExpired:
    return {"config": name, "scan": shipped_scan if scan is None else scan, "devices": need,
            "error": f"did not finish in {timeout:.0f} s"}
  wall = time.perf_counter() - t0
  row = {"config": name, "scan": shipped_scan if scan is None else scan, "devices": need, "wall": wall}
  for prog, lower, comp, peak in _PROGRAM.findall(proc.stdout):
    row[prog] = (float(lower) + float(comp), float(peak))
  problems = [l for l in proc.stdout.splitlines() if l.startswith("PROBLEM")]
  compile_problems = [l for l in problems if l.startswith("PROBLEM   compile:")]
  if compile_problems or "train step" not in row:
    row["error"] = (compile_problems or problems or proc.stderr.strip().splitlines()[-1:] or ["no output"])[0]
  row["data_problems"] = len(problems) - len(compile_problems)
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("configs", nargs="*", help=f"configs relative to configs/ (default: {', '.join(SHIPPED)})")
  p.add_argument("--scan", choices=["config", "both"], default="config",
                 help="config: scan_layers as shipped; both: also the other way")
  p.add_argument("--no_stand_in", action="store_true", help="compile on this machine's own devices")
  p.add_argument("--flag", action="append", default=[],
                 help="a config override for every run, e.g. --flag=--config.num_microbatches=4 (repeatable)")
  p.add_argument("--timeout", type=float, default=900.0, help="seconds one config's dry run may take")
  args = p.parse_args()
  names = args.configs or list(SHIPPED)
  print("| config | scan_layers | mesh devices | state init s | train step s | total s | step peak GiB/device | "
        "command wall s |", flush=True)
  print("|---|---|---|---|---|---|---|---|", flush=True)
  for name in names:
    _, shipped_scan = mesh_devices(name, args.flag)
    for scan in ([None] if args.scan == "config" else [shipped_scan, not shipped_scan]):
      r = run_one(name, scan, stand_in=not args.no_stand_in, timeout=args.timeout, extra=args.flag)
      if "error" in r and "train step" not in r:
        print(f"| {name} | {r['scan']} | {r['devices']} | {r['error']} | | | | |", flush=True)
        continue
      init, train = r.get("state init", (float("nan"), 0.0)), r["train step"]
      print(f"| {name} | {r['scan']} | {r['devices']} | {init[0]:.1f} | {train[0]:.1f} | {init[0] + train[0]:.1f} | "
            f"{train[1]:.2f} | {r['wall']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
