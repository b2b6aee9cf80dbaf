"""Data pipeline benchmarks: end-to-end throughput, sentencepiece alone, and packing efficiency.

    python benchmarks/data_pipeline.py                       # uses ../shared/data SuperNI files if present
    python benchmarks/data_pipeline.py --superni_dir /path/to/natural-instructions --seconds 20
    python benchmarks/data_pipeline.py --parts throughput --worker_count 2   # grain worker processes

Throughput is non-padding tokens (encoder + decoder) delivered in packed batches per second, end to end
(index streams, render, tokenize, truncate, pack, batch) in one process, after a warm-up batch.
Packing efficiency is the non-padding share of the token slots of packed rows, for SuperNI-like
examples (the SuperNI task files, "Definition + 2 positive examples"; or, without them, synthetic
lengths, see `_synthetic_lengths`) at 1024/256 and 2048/512 tokens. The tokenizer is trained here on
the benchmarked text (8k pieces), never downloaded.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import time
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import grain
import numpy as np

from instruct_jax.data import mixtures
from instruct_jax.data import packing
from instruct_jax.data import pipeline
from instruct_jax.data import render
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib
from instruct_jax.data import transforms

_DEFAULT_SUPERNI = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "natural-instructions"
_SUPERNI = flags.DEFINE_string("superni_dir", str(_DEFAULT_SUPERNI) if _DEFAULT_SUPERNI.is_dir() else None,
                               "natural-instructions checkout (tasks/); default ../shared/data if present.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Seconds per throughput measurement.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Rows per batch.")
_BINS = flags.DEFINE_list("bins", ["32", "128"], "num_packing_bins values for the packing table.")
_PACK_EXAMPLES = flags.DEFINE_integer("pack_examples", 20000, "Examples per packing measurement.")
_WORKERS = flags.DEFINE_integer("worker_count", 0, "grain worker processes for the throughput runs.")
_PARTS = flags.DEFINE_list("parts", ["throughput", "packing"], "What to measure.")


def _throughput(cfg: pipeline.PipelineConfig, tok, tasks, mixes, seconds: float) -> dict[str, float]:
  pipe = pipeline.make_pipeline(cfg, tok, tasks=tasks, mixtures=mixes, process_index=0, process_count=1)
  it = iter(pipe.dataset)
  next(it)  # warm-up: builds caches, reads files
  start, batches, tokens = time.perf_counter(), 0, 0
  while time.perf_counter() - start < seconds:
    b = next(it)
    batches += 1
    tokens += int((b["decoder_segment_ids"] > 0).sum())
    if "encoder_segment_ids" in b:
      tokens += int((b["encoder_segment_ids"] > 0).sum())
  elapsed = time.perf_counter() - start
  examples = int(pipe.stats.examples.sum())  # counted in this process only (0 with worker processes)
  return {"tokens/s": tokens / elapsed, "batches/s": batches / elapsed, "examples/s": examples / elapsed}


def _spm_alone(tok, texts: Sequence[str]) -> float:
  start = time.perf_counter()
  n = sum(len(tok.encode(t)) for t in texts)
  return n / (time.perf_counter() - start)


def _synthetic_lengths(n: int, seed: int = 0) -> list[tuple[int, int]]:
  """SuperNI-like (inputs, targets) token lengths when the task files are absent: log-normal inputs with
  median 270 tokens and a long tail, log-normal targets with median 6 (assumed, not measured)."""
  rng = np.random.default_rng(seed)
  ins = np.clip(rng.lognormal(np.log(270), 0.7, n), 8, 4000).astype(int)
  outs = np.clip(rng.lognormal(np.log(6), 1.1, n), 1, 1000).astype(int)
  return list(zip(ins.tolist(), outs.tolist()))


def _packing_efficiency(lengths: Sequence[tuple[int, int]], kind: str, inputs_length: int, targets_length: int,
                        bins: int, batch_size: int) -> dict[str, float]:
  feats = []
  for n_in, n_out in lengths:
    inputs, targets = np.full(n_in, 5, np.int32), np.full(n_out, 6, np.int32)
    if kind == "encoder_decoder":
      f = transforms.seq2seq_features(inputs, targets, eos_id=1, max_input_len=inputs_length,
                                      max_target_len=targets_length)
    else:
      f = transforms.decoder_features(inputs, targets, bos_id=3, eos_id=1, max_len=inputs_length + targets_length)
    if f is not None:
      feats.append({**f, "task_index": np.int32(0)})
  ds = grain.MapDataset.source(feats).to_iter_dataset(grain.ReadOptions(num_threads=0))
  ds = packing.pack_and_batch(ds, lengths=packing.feature_lengths(kind, inputs_length, targets_length),
                              batch_size=batch_size, pack=True, num_packing_bins=bins, meta_features=("task_index",))
  used = {"encoder": 0, "decoder": 0}
  slots = {"encoder": 0, "decoder": 0}
  rows = 0
  for b in ds:
    for part in used:
      if f"{part}_segment_ids" in b:
        used[part] += int((b[f"{part}_segment_ids"] > 0).sum())
        slots[part] += b[f"{part}_segment_ids"].size
    rows += b["decoder_segment_ids"].shape[0]
  out = {f"{p} %": 100 * used[p] / slots[p] for p in used if slots[p]}
  out["all %"] = 100 * sum(used.values()) / sum(slots.values())
  out["examples/row"] = len(feats) / max(rows, 1)
  return out


def main(argv: Sequence[str]) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # the pipelines log their mixture rates at INFO
  print(f"cores: {os.cpu_count()}  load average: {os.getloadavg()}")
  paths = tasks_lib.DataPaths(superni_dir=_SUPERNI.value)
  tasks, mixes = mixtures.catalogues(paths)
  with tempfile.TemporaryDirectory() as tmp:
    workloads = [("builtin", "builtin", 256, 64, render.RenderConfig()),
                 ("builtin, 30% few-shot", "builtin", 512, 64, render.RenderConfig(few_shot_rate=0.3))]
    if "niv2" in mixes:
      workloads.insert(0, ("SuperNI def+2pos", "niv2", 1024, 256, render.RenderConfig(template_ids=(0,))))
    else:
      print("(no SuperNI task files: throughput on built-in tasks only, packing on synthetic lengths)")
    texts = {name: render.sample_texts(mixtures.task_rates(mixture, tasks, mixes), tasks, rcfg, n=3000)
             for name, mixture, _, _, rcfg in workloads}
    tok = tokenizer_lib.train([t for v in texts.values() for t in v], vocab_size=8000, out_dir=tmp)
    print(f"tokenizer: {tok.vocab_size} pieces\n")
    print(f"{'workload':28s} {'in/out':>9s} {'tokens/s':>10s} {'examples/s':>10s} {'spm alone tokens/s':>19s}")
    for name, mixture, il, tl, rcfg in workloads:
      if "throughput" not in _PARTS.value:
        break
      cfg = pipeline.PipelineConfig(mixture=mixture, inputs_length=il, targets_length=tl,
                                    batch_size=_BATCH.value, render=rcfg, worker_count=_WORKERS.value)
      r = _throughput(cfg, tok, tasks, mixes, _SECONDS.value)
      print(f"{name:28s} {il:>4d}/{tl:<4d} {r['tokens/s']:10.0f} {r['examples/s']:10.0f} "
            f"{_spm_alone(tok, texts[name]):19.0f}")

    if "packing" not in _PARTS.value:
      return
    length_sets = [("synthetic SuperNI-like lengths", _synthetic_lengths(_PACK_EXAMPLES.value))]
    if "niv2" in mixes:
      real = []
      for name in mixtures.task_rates("niv2", tasks, mixes):
        for ex in render.render_split(tasks[name], "train", render.RenderConfig(template_ids=(0,))):
          real.append((len(tok.encode(ex["inputs"])), len(tok.encode(ex["targets"]))))
      pick = np.random.default_rng(0).integers(len(real), size=_PACK_EXAMPLES.value)
      length_sets.insert(0, (f"the {len(real)} SuperNI instances of the task files, Definition + 2 positive "
                             "examples, resampled", [real[i] for i in pick]))
    for source, lengths in length_sets:
      ins, outs = np.array(lengths).T
      print(f"\npacking efficiency: {source}; {len(lengths)} examples; input tokens median "
            f"{np.median(ins):.0f}, p90 {np.percentile(ins, 90):.0f}; output median {np.median(outs):.0f}, "
            f"p90 {np.percentile(outs, 90):.0f}")
      print(f"{'model':16s} {'in/out':>9s} {'bins':>5s} {'encoder %':>10s} {'decoder %':>10s} {'all %':>7s} "
            f"{'ex/row':>7s}")
      for kind in ("encoder_decoder", "decoder"):
        for il, tl in ((1024, 256), (2048, 512)):
          for bins in (int(b) for b in _BINS.value):
            e = _packing_efficiency(lengths, kind, il, tl, bins, _BATCH.value)
            print(f"{kind:16s} {il:>4d}/{tl:<4d} {bins:5d} {e.get('encoder %', float('nan')):10.1f} "
                  f"{e['decoder %']:10.1f} {e['all %']:7.1f} {e['examples/row']:7.2f}")


if __name__ == "__main__":
  app.run(main)
