"""Preference tuning (DPO, IPO, cDPO, SimPO, ORPO): the losses by value and gradient against the papers' formulas
written here in NumPy, the pair records people have, the pair rows, and the trainer's step on them (ln 2 at step 0,
microbatches, LoRA's reference without a second copy)."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instruct_jax import configs, losses, objectives, optim, sharding, step
from instruct_jax.data import preferences
from instruct_jax.models import lora
from tests import helpers
from tests.test_train import ROOT, _env


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def _reference(kind, pc, pr, nc, nr, rc, rr, beta, eps, gamma):
  """The losses as the papers write them (IPO and SimPO/ORPO on length-averaged log-probabilities, as TRL)."""
  if kind in ("dpo", "cdpo"):
    h = beta * ((pc - pr) - (rc - rr))
    e = eps if kind == "cdpo" else 0.0
    return -(1 - e) * _log_sigmoid(h) - e * _log_sigmoid(-h)
  if kind == "ipo":
    h = (pc / nc - rc / nc) - (pr / nr - rr / nr)
    return (h - 1 / (2 * beta)) ** 2
  if kind == "simpo":
    return -_log_sigmoid(beta * (pc / nc - pr / nr) - gamma)
  ac, ar = pc / nc, pr / nr
  return -_log_sigmoid((ac - ar) - (np.log1p(-np.exp(ac)) - np.log1p(-np.exp(ar))))


@pytest.mark.parametrize("kind", losses.PREFERENCE_LOSSES)
def test_each_loss_equals_the_papers_formula_by_value_and_gradient(kind):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (-rng.uniform(2, 30, 6) for _ in range(4))
  nc, nr = rng.integers(2, 20, 6).astype(np.float64), rng.integers(2, 20, 6).astype(np.float64)
  args = dict(beta=0.3, eps=0.2, gamma=0.7)
  got = losses.preference_losses(kind, jnp.asarray(pc), jnp.asarray(pr), jnp.asarray(nc), jnp.asarray(nr),
                                 jnp.asarray(rc), jnp.asarray(rr), beta=0.3, label_smoothing=0.2, gamma=0.7)[0]
  np.testing.assert_allclose(np.asarray(got), _reference(kind, pc, pr, nc, nr, rc, rr, **args), rtol=1e-5)
  # d loss / d policy log-probs: autodiff against central differences of the reference formula.
  grad = jax.grad(lambda c, r: jnp.sum(losses.preference_losses(
      kind, c, r, jnp.asarray(nc), jnp.asarray(nr), jnp.asarray(rc), jnp.asarray(rr), beta=0.3,
      label_smoothing=0.2, gamma=0.7)[0]), argnums=(0, 1))(jnp.asarray(pc), jnp.asarray(pr))
  h = 1e-5
  for i, g in enumerate(grad):
    bump = np.zeros_like(pc)
    bump[0] = h
    plus = (pc + bump, pr) if i == 0 else (pc, pr + bump)
    minus = (pc - bump, pr) if i == 0 else (pc, pr - bump)
    numeric = (_reference(kind, *plus, nc, nr, rc, rr, **args)[0] - _reference(kind, *minus, nc, nr, rc, rr,
                                                                               **args)[0]) / (2 * h)
    assert float(g[0]) == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_dpo_with_the_reference_equal_to_the_policy_is_ln_2():
  x = jnp.asarray([-3.0, -10.0])
  loss, reward_c, reward_r, _ = losses.preference_losses("dpo", x, x - 1, jnp.ones(2), jnp.ones(2), x, x - 1)
  np.testing.assert_allclose(np.asarray(loss), math.log(2), rtol=1e-7)
  assert float(jnp.abs(reward_c).max()) == 0 and float(jnp.abs(reward_r).max()) == 0


@pytest.mark.parametrize("record,prompt,chosen", [
    ({"prompt": "Name a prime.", "chosen": "7", "rejected": "8"}, [("user", "Name a prime.")], "7"),
    ({"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
      "rejected": [{"role": "assistant", "content": "Go away"}], "system": "Be kind."},
     [("system", "Be kind."), ("user", "Hi")], "Hello"),
    ({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]},
     [("user", "Hi")], "Hello"),  # UltraFeedback-binarized: the prompt repeated in each response
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]},
     [("user", "Hi")], "Hello"),  # an implicit prompt
])
def test_the_pair_formats_people_have(record, prompt, chosen):
  pair = preferences.parse_preference(record, "f.jsonl:3")
  assert [(m["role"], m["content"]) for m in pair["prompt"]] == prompt and pair["chosen"] == chosen


@pytest.mark.parametrize("record,message", [
    ({"prompt": "x", "chosen": "y"}, "f.jsonl:3: missing field 'rejected'"),
    ({"prompt": "x", "chosen": "y", "rejected": 3}, "f.jsonl:3: field 'rejected' must be a string"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "y"}], "rejected": "z"}, "field 'chosen': the response "
     "must be an assistant message"),
    ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "y", "rejected": "z"}, "must end with a user"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "y"}],
      "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "z"}]}, "share every message"),
    ({"prompt": "x", "chosen": " ", "rejected": "z"}, "field 'chosen' is empty"),
])
def test_bad_records_name_the_line_and_the_field(record, message):
  with pytest.raises(preferences.PreferenceError, match=message):
    preferences.parse_preference(record, "f.jsonl:3")


def _pairs_file(path, n=24):
  words = "apple river stone cloud green tiger paper lamp".split()
  with open(path, "w") as f:
    for i in range(n):
      xs = [words[(i + k) % len(words)] for k in range(3)]
      f.write(json.dumps({"prompt": "Reverse: " + " ".join(xs), "chosen": " ".join(reversed(xs)),
                          "rejected": " ".join(xs)}) + "\n")
  return str(path)


def _pair_batch(kind, n=4):
  """n pairs in the pipeline's layout (chosen rows, then rejected rows) from the helpers' random examples."""
  rows = helpers.concat_batches(helpers.make_batches(kind, helpers.random_examples(kind, 2 * n, seed=3), pack=False,
                                                     batch_size=2 * n, inputs_len=16, targets_len=8))
  return {k: v[:2 * n] for k, v in rows.items()}


@pytest.mark.slow  # 16 s a kind
@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_the_first_dpo_step_is_ln_2_and_microbatches_change_nothing(kind):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.get_rules("fsdp_tensor")
  model = helpers.tiny_model(kind)
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-2, schedule="constant")
  tx = optim.make_optimizer(ocfg)
  batch = _pair_batch(kind)
  out = []
  for k in (1, 2):
    state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0), reference=True)
    train = step.jit_train_step(model, tx, objectives.Preference("dpo"), optim.make_schedule(ocfg), mesh, rules,
                                state_sh, num_microbatches=k)
    state, metrics = train(state, batch, jax.random.key(1))
    out.append((jax.device_get(state.params), jax.device_get(metrics)))
    assert float(metrics["loss"]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(metrics["pairs"]) == 4 and float(metrics["rewards_margins"]) == 0
  assert helpers.max_tree_rel_err(out[0][0], out[1][0]) < 1e-4


def test_lora_dpo_keeps_no_second_copy_and_its_reference_is_the_base():
  mesh = sharding.make_mesh({"data": 8})
  rules = sharding.get_rules("data_parallel")
  model = helpers.tiny_model("decoder", lora=lora.LoraConfig(rank=4))
  objective = objectives.Preference("dpo")
  assert not step.needs_reference_copy(model, objective)
  tx = optim.make_optimizer(optim.OptimConfig(optimizer="adamw", learning_rate=1e-2, schedule="constant"))
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  assert state.reference is None
  ref = step.reference_params(model, state)
  assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree.leaves(model.trainable(ref)))
  train = step.jit_train_step(model, tx, objective, optim.make_schedule(optim.OptimConfig(schedule="constant")),
                              mesh, rules, state_sh)
  _, metrics = train(state, _pair_batch("decoder"), jax.random.key(1))
  assert float(metrics["loss"]) == pytest.approx(math.log(2), abs=1e-6)  # LoRA's B starts at 0: policy = base


def test_preference_objectives_refuse_bad_settings_and_data(tmp_path):
  c = configs.base()
  c.objective = "cdpo"
  with pytest.raises(objectives.ObjectiveConfigError, match="config.preference.label_smoothing=0.0: conservative DPO"):
    objectives.from_config(c)
  c.objective, c.preference.label_smoothing = "dpo", 0.1
  with pytest.raises(objectives.ObjectiveConfigError, match="set --config.objective=cdpo"):
    objectives.from_config(c)
  c.objective = "kto"
  with pytest.raises(objectives.ObjectiveConfigError, match="config.objective='kto': expected one of"):
    objectives.from_config(c)
  c = configs.base()
  c.preference.gamma = 1.0  # SimPO's margin, set for a run that reads none
  with pytest.raises(objectives.ObjectiveConfigError, match=r"config.preference.gamma=1.0 has no effect with "
                                                             r"config.objective='sft'; it is read by simpo"):
    objectives.from_config(c)
  c.objective = "simpo"
  assert objectives.from_config(c).gamma == 1.0
  from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  c = configs.from_command_line([f"--config={ROOT / 'configs/tiny.py'}", "--config.objective=dpo"])
  with pytest.raises(configs.ConfigError,
                     match="trains on preference pairs, but config.data.mixture='builtin_no_check' holds"):
    plan_lib.resolve(c, str(tmp_path / "w"))


@pytest.mark.slow  # ~40 s: two training runs in subprocesses
@pytest.mark.parametrize("config,objective", [("tiny.py", "dpo"), ("tiny.py:decoder", "simpo")])
def test_the_trainer_runs_a_preference_objective_from_the_command_line(tmp_path, config, objective):
  work = tmp_path / "w"
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={ROOT / 'configs' / config}", f"--workdir={work}",
         f"--config.objective={objective}",
         f"--config.data_paths.preference_files.rev={_pairs_file(tmp_path / 'p.jsonl', 64)}",
         "--config.data.mixture=preferences", "--config.total_steps=3", "--config.log_every=1",
         "--config.eval.num_examples=0", "--config.checkpoint_every=0"]
  run = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3]
  for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected"):
    assert all(np.isfinite(r[f"train/{name}"]) for r in train), name
  if objective == "dpo":
    assert train[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    # A restart resumes with the reference it saved; the workdir loads as any other (generate, evaluate, convert).
    run = subprocess.run([c if not c.startswith("--config.total_steps") else "--config.total_steps=5" for c in cmd],
                         capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert run.returncode == 0 and "Resumed from checkpoint step 3" in run.stdout, run.stderr[-3000:]
    from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
    loaded = plan_lib.load(str(work))
    assert loaded.step == 5 and jax.tree.leaves(loaded.params)


@pytest.mark.slow  # ~1 min: ten jitted steps
@pytest.mark.parametrize("kind", helpers.KINDS)
@pytest.mark.parametrize("loss", losses.PREFERENCE_LOSSES)
def test_every_loss_trains_both_model_kinds(kind, loss):
  mesh = sharding.make_mesh({"data": 8})
  rules = sharding.get_rules("data_parallel")
  model = helpers.tiny_model(kind)
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-2, schedule="constant")
  tx = optim.make_optimizer(ocfg)
  objective = objectives.Preference(loss, label_smoothing=0.1 if loss == "cdpo" else 0.0)
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0),
                                            reference=step.needs_reference_copy(model, objective))
  assert (state.reference is not None) == (loss in losses.NEEDS_REFERENCE)
  train = step.jit_train_step(model, tx, objective, optim.make_schedule(ocfg), mesh, rules, state_sh)
  batch = _pair_batch(kind)
  losses_seen = []
  for i in range(3):
    state, metrics = train(state, batch, jax.random.key(i))
    losses_seen.append(float(metrics["loss"]))
    assert np.isfinite(losses_seen[-1]) and float(metrics["grad_norm"]) > 0
  assert losses_seen[-1] < losses_seen[0]  # three steps on one batch lower its loss


@pytest.mark.slow  # importing TRL's trainers takes ~8 s
def test_simpo_and_orpo_equal_trls_loss_functions_on_the_same_log_probs():
  """TRL computes SimPO (`CPOTrainer.cpo_loss`) and ORPO's odds-ratio term (`ORPOTrainer.odds_ratio_loss`) as
  functions of the policy's length-averaged log-probs; DPO and IPO live inside `DPOTrainer._compute_loss` (no function
  to call): `test_dpo_and_ipo_equal_trls_dpo_trainer_on_one_batch` runs the trainer itself."""
  pytest.importorskip("trl")
  import types  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from trl.experimental.cpo.cpo_trainer import CPOTrainer  # pylint: disable=g-import-not-at-top
  from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  sums_c, sums_r = -rng.uniform(1, 20, 8), -rng.uniform(1, 20, 8)
  n_c, n_r = rng.integers(2, 30, 8).astype(np.float64), rng.integers(2, 30, 8).astype(np.float64)
  avg_c, avg_r = torch.tensor(sums_c / n_c), torch.tensor(sums_r / n_r)
  cpu = types.SimpleNamespace(device="cpu")
  ours = lambda kind, **kw: np.asarray(losses.preference_losses(kind, jnp.asarray(sums_c), jnp.asarray(sums_r),
                                                                jnp.asarray(n_c), jnp.asarray(n_r), **kw)[0])
  simpo = CPOTrainer.cpo_loss(types.SimpleNamespace(beta=2.0, alpha=0.0, loss_type="simpo", simpo_gamma=0.8,
                                                    label_smoothing=0.0, accelerator=cpu), avg_c, avg_r)[0]
  np.testing.assert_allclose(ours("simpo", beta=2.0, gamma=0.8), simpo.numpy(), rtol=1e-5)
  ratio = ORPOTrainer.odds_ratio_loss(types.SimpleNamespace(beta=1.0, accelerator=cpu), avg_c, avg_r)[0]
  np.testing.assert_allclose(ours("orpo"), -ratio.numpy(), rtol=1e-5)  # TRL's term is beta * log sigmoid(log odds)


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
  """Tiny Hugging Face checkpoints of both kinds, each with its own SentencePiece tokenizer."""
  from tests.convert import hf_models  # pylint: disable=g-import-not-at-top  (imports transformers)
  tmp = tmp_path_factory.mktemp("hf")
  t5_dir = hf_models.save(hf_models.build("t5_flan"), tmp / "t5", "t5_flan")
  hf_models.train_spm(t5_dir / "spiece.model")
  llama_dir = hf_models.save(hf_models.build("llama3"), tmp / "llama", "llama3")
  hf_models.train_spm(llama_dir / "tokenizer.model", llama_ids=True)
  return {"t5": t5_dir, "llama": llama_dir}


@pytest.mark.slow  # ~2 min: ten short runs, each compiling its step
@pytest.mark.parametrize("name", ["llama", "t5"])
def test_each_loss_fine_tunes_a_checkpoint_as_the_readme_command_does(hf_checkpoints, tmp_path, name):
  """README's command (configs/finetune.py, init_from a Hugging Face checkpoint) with each objective, shortened."""
  from instruct_jax import train  # pylint: disable=g-import-not-at-top
  pairs = _pairs_file(tmp_path / "pairs.jsonl", 32)
  for loss in losses.PREFERENCE_LOSSES:
    config = configs.from_command_line([
        f"--config={ROOT / 'configs/finetune.py'}", f"--config.init_from={hf_checkpoints[name]}",
        f"--config.objective={loss}", f"--config.data_paths.preference_files.mine={pairs}",
        "--config.data.mixture=preferences", "--config.total_steps=2", "--config.log_every=1",
        "--config.checkpoint_every=0", "--config.data.batch_size=8", "--config.data.inputs_length=32",
        "--config.data.targets_length=16", *(["--config.preference.label_smoothing=0.1"] if loss == "cdpo" else [])])
    result = train.train_and_evaluate(config, str(tmp_path / loss))
    rows = [json.loads(line) for line in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "train/loss" in r]
    assert result["final_step"] == 2 and len(train_rows) == 2, loss
    assert all(np.isfinite(r["train/loss"]) and "train/rewards/margins" in r for r in train_rows), loss
    if loss in ("dpo", "cdpo"):  # the reference is the checkpoint itself at step 1
      expected = math.log(2)  # cdpo: -(1 - e) log sigmoid(0) - e log sigmoid(0) = ln 2 too
      assert train_rows[0]["train/loss"] == pytest.approx(expected, abs=1e-5), loss


@pytest.mark.slow  # TRL's trainer on a tiny Llama: ~20 s
@pytest.mark.parametrize("kind, trl_loss, beta", [("dpo", "sigmoid", 0.1), ("ipo", "ipo", 0.5)])
def test_dpo_and_ipo_equal_trls_dpo_trainer_on_one_batch(tmp_path, kind, trl_loss, beta):
  """TRL's DPOTrainer (its own tokenization, collator, model forward and `compute_loss`) against our objective on the
  same token ids, with a reference model that differs from the policy. TRL 1.16 has no conservative DPO (its
  sigmoid loss ignores label_smoothing): cdpo is checked against its formula above."""
  trl = pytest.importorskip("trl")
  torch = pytest.importorskip("torch")
  import datasets  # pylint: disable=g-import-not-at-top
  import tokenizers  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from instruct_jax import convert  # pylint: disable=g-import-not-at-top
  from instruct_jax.models import build  # pylint: disable=g-import-not-at-top
  from tests.convert import hf_models  # pylint: disable=g-import-not-at-top
  words = ["<pad>", "<s>", "</s>", "<unk>", *"sort reverse the numbers : 1 2 3 4 a b c d please".split()]
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
  pairs = [{"prompt": "sort the numbers : 3 1 2", "chosen": " 1 2 3", "rejected": " 3 2 1 2"},
           {"prompt": "reverse : a b c d", "chosen": " d c b a", "rejected": " a"},
           {"prompt": "please sort : 4 2", "chosen": " 2 4", "rejected": " 4 2 4 2 4"}]
  dirs = {}
  for name, seed in (("policy", 0), ("reference", 1)):
    dirs[name] = hf_models.save(hf_models.build("llama3", seed=seed), tmp_path / name, "llama3")
  policy = transformers.AutoModelForCausalLM.from_pretrained(dirs["policy"], dtype=torch.float32)
  reference = transformers.AutoModelForCausalLM.from_pretrained(dirs["reference"], dtype=torch.float32)
  args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, loss_type=[trl_loss], report_to=[],
                       per_device_train_batch_size=len(pairs), use_cpu=True,
                       bf16=False)  # TRL's default (bf16) runs the reference under bf16 autocast here: fp32 throughout
  trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args,
                           train_dataset=datasets.Dataset.from_list(pairs), processing_class=tok)
  inputs = next(iter(trainer.get_train_dataloader()))
  with torch.no_grad():
    theirs = float(trainer.compute_loss(trainer.model.eval(), inputs))
  # The same rows as our decoder batch: [chosen rows, rejected rows], scored on the completion (end-of-text included).
  ids, mask, scored = (inputs[k].numpy() for k in ("input_ids", "attention_mask", "completion_mask"))
  batch = {"decoder_input_tokens": ids[:, :-1], "decoder_target_tokens": ids[:, 1:],
           "decoder_loss_weights": (scored[:, 1:] * mask[:, 1:]).astype(np.float32),
           "decoder_segment_ids": mask[:, :-1].astype(np.int32),
           "decoder_positions": np.maximum(np.cumsum(mask[:, :-1], axis=1) - 1, 0).astype(np.int32)}
  mesh, rules = sharding.make_mesh({"data": 1}, jax.devices()[:1]), sharding.get_rules("data_parallel")
  ours_policy, ours_reference = (convert.import_hf(dirs[n], mesh, rules) for n in ("policy", "reference"))
  model = build.Model(ours_policy.config)
  objective = objectives.Preference(kind=kind, beta=beta)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  _, shared = objective.prepare(batch)
  ours, sums = objective.loss(model, ours_policy.params, batch, None, shared, dropout_rng=None, packed=True,
                              reference=ours_reference.params)
  assert float(ours) == pytest.approx(theirs, rel=1e-5, abs=1e-6)
  assert theirs != pytest.approx(math.log(2), abs=1e-3)  # the reference differs from the policy
  assert float(sums["pairs"]) == len(pairs)


def _pair_layouts(n=6, row_pairs_len=24):
  """The same n decoder pairs (prompt + response, each its own example) in both layouts: padded (rows [chosen...,
  rejected...]) and packed (`packing.pack_pairs_and_batch`: whole pairs in rows of twice the length)."""
  import grain  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import packing, transforms  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  pairs = []
  for _ in range(n):
    prompt = rng.integers(3, 500, rng.integers(2, 8))
    halves = [transforms.decoder_features(prompt, rng.integers(3, 500, rng.integers(1, 6)), bos_id=helpers.BOS,
                                          eos_id=helpers.EOS, max_len=row_pairs_len) for _ in range(2)]
    pairs.append({"chosen": halves[0], "rejected": halves[1], "task_index": np.int32(0)})
  lengths = packing.feature_lengths("decoder", row_pairs_len // 2, row_pairs_len // 2)
  source = lambda: grain.MapDataset.source(pairs).to_iter_dataset()
  padded = next(iter(packing.pad_pairs_and_batch(source(), lengths=lengths, batch_size=n,
                                                 meta_features=("task_index",))))
  packed = list(packing.pack_pairs_and_batch(source(), lengths=lengths, batch_size=n, meta_features=("task_index",),
                                             num_packing_bins=n, drop_remainder=False))
  return pairs, padded, {k: np.concatenate([b[k] for b in packed]) for k in packed[0]}


def test_packed_pairs_keep_each_response_its_own_segment_and_positions():
  pairs, _, packed = _pair_layouts()
  seg, pos = packed["decoder_segment_ids"], packed["decoder_positions"]
  assert seg.shape[1] == 48 and seg.max() >= 4  # several pairs share a row
  found = []
  for r in range(seg.shape[0]):
    for s in range(1, seg[r].max() + 1, 2):  # a pair: segments s (chosen) and s + 1 (rejected), one after the other
      c, j = np.flatnonzero(seg[r] == s), np.flatnonzero(seg[r] == s + 1)
      assert len(c) and len(j) and c[-1] + 1 == j[0]
      assert pos[r][c].tolist() == list(range(len(c))) and pos[r][j].tolist() == list(range(len(j)))
      found.append((packed["decoder_target_tokens"][r][c].tolist(), packed["decoder_target_tokens"][r][j].tolist()))
  want = [(p["chosen"]["decoder_target_tokens"].tolist(), p["rejected"]["decoder_target_tokens"].tolist())
          for p in pairs]
  assert sorted(found) == sorted(want)  # every pair once, whole


def test_packed_pairs_give_the_padded_layouts_losses_and_gradients_and_nothing_leaks():
  model = helpers.tiny_model("decoder")
  params = helpers.init_params(model, seed=1)
  reference = helpers.init_params(model, seed=2)
  _, padded, packed = _pair_layouts()
  padded, packed = ({k: jnp.asarray(v) for k, v in b.items() if k != "task_index"} for b in (padded, packed))
  for kind in ("dpo", "orpo"):  # a reference and sums; no reference, averages and the chosen tokens' NLL
    values = []
    for layout, batch in (("padded", padded), ("packed", packed)):
      objective = objectives.Preference(kind, packed=layout == "packed")
      _, shared = objective.prepare(batch)

      def loss_fn(p, objective=objective, batch=batch, shared=shared):
        return objective.loss(model, p, batch, None, shared, dropout_rng=None, packed=True, reference=reference)

      (loss, sums), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
      values.append((float(loss), {k: float(v) for k, v in sums.items()}, grads))
    (loss_a, sums_a, grads_a), (loss_b, sums_b, grads_b) = values
    assert loss_b == pytest.approx(loss_a, rel=1e-5), kind
    for name in ("pairs", "rewards_chosen", "rewards_margins", "logps_chosen", "logps_rejected", "nll_sum",
                 "weight_sum"):
      assert sums_b[name] == pytest.approx(sums_a[name], rel=1e-5, abs=1e-6), (kind, name)
    assert helpers.max_tree_rel_err(grads_a, grads_b) < 1e-4, kind
  # No leakage: changing a row's chosen response leaves the log-probs of its rejected responses as they were.
  objective = objectives.Preference("dpo", packed=True)
  logp = lambda b: objective._by_response(  # pylint: disable=protected-access
      -losses.cross_entropy(model.apply(params, b, dropout_rng=None, packed=True), b["decoder_target_tokens"])[1]
      * b["decoder_loss_weights"], b)
  changed = dict(packed)
  odd = (packed["decoder_segment_ids"] % 2 == 1)
  changed["decoder_input_tokens"] = jnp.where(odd, 7, packed["decoder_input_tokens"])
  (chosen, rejected), (chosen2, rejected2) = logp(packed), logp(changed)
  np.testing.assert_allclose(np.asarray(rejected2), np.asarray(rejected), rtol=1e-5, atol=1e-6)
  assert not np.allclose(np.asarray(chosen2), np.asarray(chosen))


def test_the_first_packed_dpo_step_is_ln_2():
  mesh, rules = sharding.make_mesh({"data": 1}, jax.devices()[:1]), sharding.get_rules("data_parallel")
  model = helpers.tiny_model("decoder")
  tx = optim.make_optimizer(optim.OptimConfig(optimizer="adamw", learning_rate=1e-2, schedule="constant"))
  _, _, packed = _pair_layouts()
  batch = {k: v for k, v in packed.items() if k != "task_index"}
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0), reference=True)
  objective = objectives.Preference("dpo", packed=True)
  train = step.jit_train_step(model, tx, objective, optim.make_schedule(optim.OptimConfig(schedule="constant")), mesh,
                              rules, state_sh)
  _, metrics = train(state, batch, jax.random.key(1))
  assert float(metrics["loss"]) == pytest.approx(math.log(2), abs=1e-6) and float(metrics["pairs"]) == 6
