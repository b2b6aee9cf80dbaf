"""Fine-tune a pre-trained T5 v1.1 / Flan-T5 on a Flan-style mixture. The argument picks the size.

    python -m instruct_jax.convert --from hf --src /ckpt/flan-t5-base --dst /ckpt/flan-t5-base-ij
    python -m instruct_jax.train --config configs/flan_t5.py:base --workdir gs://bucket/flan_t5_base \\
        --config.init_from=/ckpt/flan-t5-base-ij --config.tokenizer.path=/ckpt/flan-t5-base/spiece.model \\
        --config.data_paths.superni_dir=/data/natural-instructions --config.data.mixture=niv2_train

Sizes and the hardware they are set up for (mesh data x fsdp x tensor; batch 128 rows of 1024 + 256 tokens):
    small (77M), base (248M): one GPU or a v4-8, data parallel.
    large (783M): a v4-8 or 8 GPUs, FSDP.
    xl (2.85B): a v4-32 or 8x H100, FSDP.
    xxl (11.1B): a v4-128 or 32x H100, FSDP + tensor parallel, bf16 compute, remat, Adafactor.
Runtime (estimated, not measured by this project): about 3 h for base on a v4-8 at 20k steps.
Expected result: Tk-Instruct-style training on the SuperNI train tasks (Definition + 2 positive examples,
1024/128 tokens, constant lr) reaches the published SuperNI test ROUGE-L region for its size (Tk-Instruct:
3B 54.3, 11B 60.1); `python -m instruct_jax.evaluate` scores it the same way. Not yet reproduced here.
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
    raise ValueError(f"flan_t5 size must be one of {sorted(_SIZES)}, got {size!r}")
  s = _SIZES[size]
  c = configs.sibling(__file__, "quickstart.py")
  c.total_steps = 20_000
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.eval_every = 2000
  c.model = ml_collections.ConfigDict(dict(kind="t5", size=size, dtype="bfloat16", param_dtype="float32",
                                           remat_policy=s["remat"], scan_layers=size in ("xl", "xxl"),
                                           overrides={}))
  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=32000, train_examples=0))
  c.data = ml_collections.ConfigDict(dict(
      mixture="builtin_and_tfds", inputs_length=1024, targets_length=256, batch_size=128, pack=True,
      render=dict(few_shot_rate=0.3, options_rate=0.5, inversion_rate=0.1, cot_rate=0.05)))
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  c.sharding = s["sharding"]
  c.optim = ml_collections.ConfigDict(dict(
      optimizer="adafactor" if size == "xxl" else "adamw", learning_rate=1e-3 if size == "xxl" else 5e-5,
      schedule="constant", warmup_steps=100, weight_decay=0.0, grad_clip_norm=1.0))
  c.loss = ml_collections.ConfigDict(dict(normalization="tokens", z_loss=1e-4, label_smoothing=0.0))
  c.eval = ml_collections.ConfigDict(dict(
      held_out_cluster="check", seen_templates=(0, 1, 2, 3, 4, 5, 6, 7), unseen_templates=(8, 9, 10),
      num_examples=50, max_new_tokens=64, batch_size=64, before_training=False, rank_classification=True))
  return c
