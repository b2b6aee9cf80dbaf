"""Flan 2021 leave-one-cluster-out instruction tuning of T5: train on every Flan 2021 task cluster but one, then
evaluate the held-out cluster zero-shot. The argument names the T5 size (as configs/recipes/flan_t5.py).

    for d in $(python -c "from instruct_jax.data import flan2021; print(*[s.name for s in flan2021.SPECS])"); do
      tfds build $d --data_dir=/data/tfds --file_format=array_record; done     # once, on a machine with TensorFlow
    python -m instruct_jax.data.preview --mixture flan2021 --tfds_data_dir=/data/tfds     # what is prepared
    python -m instruct_jax.train --config configs/flan2021.py:xl --workdir /mnt/bucket/flan2021_no_nli \\
        --config.data_paths.tfds_data_dir=/data/tfds --config.eval.held_out_cluster=nli

The training mixture is flan2021_no_<held_out_cluster>: examples-proportional over the other clusters' tasks,
at most 3,000 examples per task in the rates and 30,000 per dataset read (Flan 2021's caps: config keys
data.mixing_cap and data.max_task_examples); templates chosen uniformly, inverted ones one time in five, the
answer options always shown. The held-out cluster is evaluated as Flan did: classification and multiple-choice
tasks by rank classification over their options, the others by their generation metric (exact match or ROUGE-L).
Settings not in this project's references are taken from the Flan paper as remembered (30k steps, Adafactor,
lr 3e-5, 1024 input / 256 target tokens, packing), with a row batch instead of its token batch.
Hardware: xl (2.85B) on a v4-32 or 8x H100 (FSDP; XLA plans 14 GiB per device for the step); base (248M) data
parallel on 8 GPUs or TPU chips, or on one 80 GB GPU with --config.num_microbatches=8 (XLA plans 56 GiB for
its step, 416 GiB whole, with the einsum attention on a CPU stand-in: BENCHMARKS.md, "Compile time").
Runtime (estimated, not measured here): about 1 day for xl on a v4-32 at 30k steps of 128 rows.
Expected result: Flan's published one, not measured here: instruction tuning a 137B decoder this way beat
zero-shot GPT-3 175B on 20 of 25 held-out datasets; the same paper found it hurt held-out tasks for models of
8B parameters and fewer, so T5 sizes here should not be expected to reach those gains.
"""
import ml_collections

from instruct_jax import configs

_SIZES = {
    "small": dict(mesh=dict(data=-1, fsdp=1, tensor=1), sharding="data_parallel", remat="none"),
    "base": dict(mesh=dict(data=-1, fsdp=1, tensor=1), sharding="data_parallel", remat="none"),
    "large": dict(mesh=dict(data=-1, fsdp=8, tensor=1), sharding="fsdp", remat="dots_no_batch"),
    "xl": dict(mesh=dict(data=-1, fsdp=8, tensor=1), sharding="fsdp", remat="full"),
    "xxl": dict(mesh=dict(data=-1, fsdp=8, tensor=4), sharding="fsdp_tensor", remat="full"),
}


def get_config(arg: str | None = "base") -> ml_collections.ConfigDict:
  size = arg or "base"
  if size not in _SIZES:
    raise ValueError(f"configs/flan2021.py: size must be one of {sorted(_SIZES)}, got {size!r}")
  s = _SIZES[size]
  c = configs.base()
  c.total_steps = 30_000
  c.log_every = 100
  c.checkpoint_every = 1000
  c.eval_every = 5000
  c.model.kind, c.model.size = "encoder_decoder", size
  c.model.dtype = "bfloat16"
  c.model.remat_policy = s["remat"]
  c.model.scan_layers = True  # compiles 3-19x faster than unrolled layers (BENCHMARKS.md, "Compile time")
  c.tokenizer.vocab_size = 32000
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  c.sharding = s["sharding"]

  c.data.mixture = "flan2021"  # with eval.held_out_cluster set, the run trains on flan2021_no_<cluster>
  c.data.mixing_cap = 3000  # Flan 2021: examples-proportional mixing, at most 3,000 examples per task
  c.data.max_task_examples = 30_000  # Flan 2021: at most 30k training examples per dataset
  c.data.inputs_length = 1024
  c.data.targets_length = 256
  c.data.batch_size = 128
  c.data.render.options_rate = 1.0
  c.data.render.inversion_rate = 0.2  # about 2 of a task's 10 templates are inverted
  c.data.render.template_choice = "random"

  c.optim.optimizer = "adafactor"
  c.optim.learning_rate = 3e-5
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.loss.z_loss = 1e-4

  c.eval.held_out_cluster = "nli"  # any of instruct_jax.data.flan2021.CLUSTERS
  c.eval.split = "test"  # each task's labelled held-out split (flan2021.py maps it)
  c.eval.num_examples = 200
  c.eval.max_new_tokens = 64
  c.eval.batch_size = 64
  c.eval.rank_classification = True
  c.eval.before_training = False
  return c
