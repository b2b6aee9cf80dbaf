"""Fine-tune a pre-trained T5 v1.1 / Flan-T5 on SuperNI's training tasks (Tk-Instruct style). The argument
names the size, which must match the checkpoint's (a contradiction is an error, never ignored).

    python -m instruct_jax.convert --from hf --src /ckpt/flan-t5-base --dst /ckpt/flan-t5-base-ij
    python -m instruct_jax.train --config configs/recipes/flan_t5.py:base --workdir /mnt/bucket/flan_t5_base \\
        --config.init_from=/ckpt/flan-t5-base-ij --config.data_paths.superni_dir=/data/natural-instructions

Published hyperparameters: Tk-Instruct (Wang et al. 2022, "Super-NaturalInstructions"), the SuperNI recipe
this config follows: T5 (LM-adapted) fine-tuned on the 756 English train tasks, at most 100 instances per
task, encoded as Definition + 2 positive examples, inputs cut to 1024 tokens and outputs to 128, constant
learning rate 5e-5, 2 epochs; evaluated on the 119 test tasks by ROUGE-L. Flan-T5 itself (Chung et al. 2022,
"Scaling Instruction-Finetuned Language Models") was fine-tuned on the Flan Collection with Adafactor at a
constant learning rate on packed 2048/512-token rows (its appendix lists the per-size rates and batch sizes);
the xxl size here takes Adafactor too, for its factored (small) optimizer state, at a constant 1e-3 (the T5
paper's fine-tuning rate with Adafactor; our choice, not Tk-Instruct's 5e-5, which is an AdamW rate).
The tokenizer is the checkpoint's own (spiece.model travels with the converted directory). Without
init_from the same command trains that size from scratch with a tokenizer trained on the mixture.
Here: the first 100 instances of each train task (data_paths.superni_train_instances), template 0 only (the
Definition + 2 positive examples encoding) in training and evaluation, one example per row, 1024/128 tokens,
2 epochs of the 756 x 100 = 75,600 examples at 128 rows per step = 1,182 steps (Tk-Instruct's batch size is not in
this project's references; 128 rows is this recipe's choice).
Hardware, per size (mesh data x fsdp x tensor; batch 128 rows of 1024 + 128 tokens; the most memory XLA plans
per device for the train step, from `--dry_run --compile` on a CPU stand-in with the einsum attention (a GPU's
cuDNN or a TPU's Pallas attention holds less): BENCHMARKS.md, "Compile time"). A T5 v1.1 / Flan-T5 checkpoint
brings dropout_rate 0.1, which keeps training on that einsum attention (no fused kernel drops attention
probabilities; `--dry_run` says which kernel each phase takes): --config.model.dropout_rate=0 trains on the fused one):
    small (77M), base (248M): data parallel over 8 GPUs or TPU chips; on one 80 GB GPU add
        --config.num_microbatches=8 (16 rows at a time: 18 and 51 GiB, against 130 and 362 GiB whole).
    large (783M): 8 GPUs or a v4-16 (8 chips), FSDP (24 GiB per device).
    xl (2.85B): a v4-32 or 8x H100, FSDP (16 GiB per device).
    xxl (11.1B): a v4-128 or 32x H100, FSDP + tensor parallel, bf16 compute, remat, Adafactor.
Runtime (estimated, not measured by this project): well under an hour for base on a v4-8 (1,182 steps).
Expected result: Tk-Instruct-style training on the SuperNI train tasks (Definition + 2 positive examples,
1024/128 tokens, constant lr 5e-5) reaches the published SuperNI test ROUGE-L region for its size
(Tk-Instruct: 3B 54.3, 11B 60.1); `python -m instruct_jax.evaluate` scores it the same way. Not yet
reproduced here.
"""
import ml_collections

from instruct_jax import configs

EPOCHS, TRAIN_TASKS, INSTANCES, BATCH = 2, 756, 100, 128

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
  c = configs.base()
  c.total_steps = -(-EPOCHS * TRAIN_TASKS * INSTANCES // BATCH)  # 1,182
  c.log_every = 20
  c.checkpoint_every = 200
  c.eval_every = 400
  c.model.kind, c.model.size = "encoder_decoder", size
  c.model.dtype = "bfloat16"
  c.model.remat_policy = s["remat"]
  c.model.scan_layers = True  # compiles 3-19x faster than unrolled layers (BENCHMARKS.md, "Compile time")
  c.tokenizer.vocab_size = 32000
  c.data.mixture = "niv2_train"
  c.data_paths.superni_train_instances = INSTANCES  # Tk-Instruct: the first 100 instances of each task
  c.data.render.template_ids = (0,)  # Definition + 2 positive examples
  c.data.pack = False
  c.data.inputs_length = 1024
  c.data.targets_length = 128
  c.data.batch_size = BATCH
  c.mesh = ml_collections.ConfigDict(s["mesh"])
  c.sharding = s["sharding"]
  c.optim.optimizer = "adafactor" if size == "xxl" else "adamw"
  c.optim.learning_rate = 1e-3 if size == "xxl" else 5e-5
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 100
  c.loss.z_loss = 1e-4
  c.eval.tasks = ("niv2_test",)  # SuperNI's held-out test tasks, first 100 instances each
  c.eval.num_examples = 100
  c.eval.max_new_tokens = 64
  c.eval.batch_size = 64
  c.eval.before_training = False
  return c
