"""Import time and peak host memory of a >= 1B-parameter Hugging Face checkpoint, against its size on disk.

Writes random weights with Llama-3.2-1B shapes (instruct_jax's decoder "1b" config: 1.24B parameters,
tied embeddings, llama3 RoPE scaling) as sharded safetensors with numpy + safetensors, then imports the
directory with `convert.import_hf` in a fresh subprocess per setting, so each peak is that import's own:

    python benchmarks/convert_import.py                        # bfloat16 checkpoint; ~3 min on 2 CPU cores
    python benchmarks/convert_import.py --dtype float32 --keep /tmp/llama1b_f32

Reported per setting: wall time of import_hf (placing every parameter), the process's peak resident set
(VmHWM: anonymous + file-backed pages) and peak anonymous memory (sampled every 20 ms), each also minus
the process's baseline after importing jax; and the size of the checkpoint files.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np


def _status_kib(field: str) -> int:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  return 0


def write_checkpoint(out: pathlib.Path, dtype: str, shard_bytes: int = 1 << 30) -> int:
  """Random Llama-3.2-1B-shaped weights as model-0000k-of-0000n.safetensors + index; returns bytes."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  V, D, F, L, H, N, K = 128256, 2048, 8192, 16, 32, 8, 64
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
            "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": N,
            "head_dim": K, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": True,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": 128001, "dtype": dtype}
  shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
  for i in range(L):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (H * K, D), p + "self_attn.k_proj.weight": (N * K, D),
                   p + "self_attn.v_proj.weight": (N * K, D), p + "self_attn.o_proj.weight": (D, H * K),
                   p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                   p + "mlp.down_proj.weight": (D, F), p + "input_layernorm.weight": (D,),
                   p + "post_attention_layernorm.weight": (D,)})
  np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
  rng = np.random.default_rng(0)
  shards, current, size = [], {}, 0
  for name, shape in shapes.items():
    nbytes = int(np.prod(shape)) * np_dtype.itemsize
    if current and size + nbytes > shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = shape
    size += nbytes
  shards.append(current)
  out.mkdir(parents=True, exist_ok=True)
  weight_map, total = {}, 0
  for k, shard in enumerate(shards):
    filename = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
    tensors = {}
    for name, shape in shard.items():
      if len(shape) == 1:
        tensors[name] = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np_dtype)
      else:
        tensors[name] = (rng.standard_normal(shape, dtype=np.float32) * shape[1] ** -0.5).astype(np_dtype)
      weight_map[name] = filename
    save_file(tensors, out / filename, metadata={"format": "pt"})
    total += sum(t.nbytes for t in tensors.values())
    del tensors
  (out / "model.safetensors.index.json").write_text(
      json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
  (out / "config.json").write_text(json.dumps(config, indent=2))
  return total


def run_import(src: str, param_dtype: str, scan: bool, devices: int) -> dict:
  """In this process: import `src`, return timings and memory (called in a fresh subprocess)."""
  if devices > 1:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=g-import-not-at-top

  from instruct_jax import sharding  # pylint: disable=g-import-not-at-top
  from instruct_jax import convert  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({"fsdp": -1})
  rules = sharding.get_rules("fsdp")
  baseline_rss, baseline_anon = _status_kib("VmRSS"), _status_kib("RssAnon")
  peak_anon = [baseline_anon]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak_anon[0] = max(peak_anon[0], _status_kib("RssAnon"))
      time.sleep(0.02)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  start = time.perf_counter()
  pretrained = convert.import_hf(src, mesh, rules, param_dtype=param_dtype, scan_layers=scan)
  jax.block_until_ready(pretrained.params)
  seconds = time.perf_counter() - start
  done.set()
  sampler.join()
  leaves = jax.tree.leaves(pretrained.params)
  return {"seconds": seconds, "params": sum(x.size for x in leaves), "param_bytes": sum(x.nbytes for x in leaves),
          "bytes_read": pretrained.bytes_read, "baseline_rss": baseline_rss * 1024,
          "peak_rss": _status_kib("VmHWM") * 1024, "baseline_anon": baseline_anon * 1024,
          "peak_anon": peak_anon[0] * 1024, "devices": len(jax.devices())}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="checkpoint dtype")
  parser.add_argument("--keep", default=None, help="write (or reuse) the checkpoint here and keep it")
  parser.add_argument("--devices", type=int, default=1, help="CPU devices to shard over (fsdp)")
  # Set by the parent for each measured subprocess.
  parser.add_argument("--import_dir", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--param_dtype", default="float32", help=argparse.SUPPRESS)
  parser.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.import_dir:
    print(json.dumps(run_import(args.import_dir, args.param_dtype, args.scan, args.devices)))
    return

  workdir = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="convert_bench_"))
  try:
    if not (workdir / "config.json").is_file():
      start = time.perf_counter()
      write_checkpoint(workdir, args.dtype)
      print(f"wrote random {args.dtype} checkpoint to {workdir} in {time.perf_counter() - start:.0f}s")
    disk = sum(p.stat().st_size for p in workdir.glob("*.safetensors"))
    print(f"checkpoint: {disk / 2**30:.2f} GiB on disk ({len(list(workdir.glob('*.safetensors')))} files)\n")
    print("| param dtype | layout | devices | params | import s | peak RSS GiB (over baseline) | "
          "peak anon GiB (over baseline) | params GiB | disk GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    root = pathlib.Path(__file__).resolve().parents[1]
    for param_dtype, scan in (("bfloat16", False), ("bfloat16", True), ("float32", False)):
      cmd = [sys.executable, __file__, "--import_dir", str(workdir), "--param_dtype", param_dtype,
             "--devices", str(args.devices)] + (["--scan"] if scan else [])
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False,
                            env={**os.environ, "PYTHONPATH": str(root)})
      if proc.returncode:
        raise SystemExit(proc.stderr[-4000:])
      r = json.loads(proc.stdout.strip().splitlines()[-1])
      g = lambda b: b / 2**30
      print(f"| {param_dtype} | {'scanned' if scan else 'unrolled'} | {r['devices']} | {r['params'] / 1e9:.2f}B | "
            f"{r['seconds']:.1f} | {g(r['peak_rss']):.2f} ({g(r['peak_rss'] - r['baseline_rss']):.2f}) | "
            f"{g(r['peak_anon']):.2f} ({g(r['peak_anon'] - r['baseline_anon']):.2f}) | "
            f"{g(r['param_bytes']):.2f} | {g(disk):.2f} |", flush=True)
  finally:
    if not args.keep:
      shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
  main()
