"""DPO on built-in data, on a CPU: held-out preference accuracy rises as a tiny decoder learns to prefer the correct
ordering of a list over a wrong one.

    python benchmarks/dpo_demo.py --out /tmp/dpo_demo [--sft_steps 300 --dpo_steps 200]

1. Pairs from the built-in "order" tasks (sort ascending, sort descending, reverse): the prompt is the task's
   template 0, the chosen response its correct answer, the rejected one the same items in another order. 2,000
   train pairs and 200 test pairs, written as a preference file ({prompt, chosen, rejected} JSONL).
2. SFT: configs/tiny.py:decoder on the order tasks (template 0), `--sft_steps` steps.
3. DPO from that workdir (init_from), beta 0.1, evaluated on the test pairs every 25 steps (evaluator kind
   "preferences": the first evaluation, before training, is the reference).

Prints the held-out metrics per evaluation (eval/prefs/rewards/accuracies, margins, logps/accuracies) from the DPO
run's metrics.jsonl. Figures: BENCHMARKS.md and README ("Preference tuning").
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instruct_jax.data import mixtures, render  # noqa: E402  pylint: disable=wrong-import-position

TASKS = ("builtin/sort_ascending", "builtin/sort_descending", "builtin/reverse")


def write_pairs(path: pathlib.Path, split: str, n: int, seed: int) -> None:
  """n pairs per split: the prompt and correct answer of a built-in order task, and the same items misordered."""
  tasks, _ = mixtures.catalogues()
  rng = random.Random(seed)
  with open(path, "w", encoding="utf-8") as f:
    for i in range(n):
      task = tasks[TASKS[i % len(TASKS)]]
      ex = render.render_split(task, split, render.RenderConfig(template_ids=(0,)), n=i // len(TASKS) + 1)[-1]
      items = ex["targets"].split(" ")
      wrong = list(items)
      while len(set(items)) > 1 and wrong == items:
        rng.shuffle(wrong)
      if wrong == items:
        continue
      f.write(json.dumps({"prompt": ex["inputs"], "chosen": ex["targets"], "rejected": " ".join(wrong)}) + "\n")


def train(*flags: str) -> None:
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={ROOT / 'configs/tiny.py'}:decoder", *flags]
  print("$ " + " ".join(cmd[1:]), flush=True)
  subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--sft_steps", type=int, default=300)
  parser.add_argument("--dpo_steps", type=int, default=200)
  parser.add_argument("--beta", type=float, default=0.1)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  write_pairs(out / "train.jsonl", "train", 2000, seed=0)
  write_pairs(out / "test.jsonl", "test", 200, seed=1)
  common = ["--config.data.render.template_ids=(0,)", "--config.eval.num_examples=0", "--config.checkpoint_every=0",
            "--config.log_every=25", "--config.data.batch_size=16", "--config.model.overrides.d_model=64",
            "--config.model.overrides.d_ff=128", "--config.model.overrides.num_heads=4"]
  sft = out / "sft"
  if not (sft / "checkpoints").is_dir():
    train(f"--workdir={sft}", f"--config.total_steps={args.sft_steps}", "--config.data.mixture=builtin_order", *common)
  dpo = out / "dpo"
  train(f"--workdir={dpo}", f"--config.total_steps={args.dpo_steps}", f"--config.init_from={sft}",
        "--config.objective=dpo", f"--config.preference.beta={args.beta}", "--config.optim.learning_rate=1e-3",
        "--config.optim.warmup_steps=10", f"--config.data_paths.preference_files.order=train={out / 'train.jsonl'},"
        f"test={out / 'test.jsonl'}", "--config.data.mixture=preferences",
        f"--config.evals.prefs=kind=preferences,tasks=order,num_examples=200,every=25,beta={args.beta}",
        "--config.model.size=", *common)  # the shape is init_from's (the overrides agree with it)
  rows = [json.loads(line) for line in (dpo / "metrics.jsonl").read_text().splitlines()]
  print(f"{'step':>5} {'rewards/accuracies':>19} {'rewards/margins':>16} {'logps/accuracies':>17}")
  for r in rows:
    if "eval/prefs/rewards/accuracies" in r:
      print(f"{r['step']:>5} {r['eval/prefs/rewards/accuracies']:>19.3f} {r['eval/prefs/rewards/margins']:>16.3f} "
            f"{r['eval/prefs/logps/accuracies']:>17.3f}")


if __name__ == "__main__":
  main()
