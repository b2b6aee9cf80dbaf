"""Ahead-of-time compilation (instruct_jax/aot.py; `train --dry_run --compile`): the programs compiled from
shapes alone are the trainer's own (they take its real state and batches and give its results), and the dry
run reports them, or says why it cannot compile here."""
import jax
import numpy as np
import pytest

from instruct_jax import aot, configs, objectives, optim, sharding, step, train
from tests import helpers


def _groups_batch(kind):
  batch = helpers.make_batches(kind, helpers.random_examples(kind, 40, seed=3), pack=True, batch_size=8,
                               inputs_len=16, targets_len=12)[0]  # (a decoder row: 16 + 12 tokens)
  assert batch["decoder_target_tokens"].shape[0] == 8 and batch["decoder_segment_ids"].max() > 1
  task = (batch["decoder_segment_ids"] % 3).astype(np.int32)
  return {**batch, "task_index": task, "template_id": (task + 1) % 2}, (("task", "task_index", 3),
                                                                        ("template", "template_id", 2))


@pytest.mark.slow  # 14 s a kind
@pytest.mark.parametrize("kind", helpers.KINDS_T5_SLOW)
def test_compiled_programs_are_the_trainers(kind):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
  rules = sharding.get_rules("fsdp")
  model = helpers.tiny_model(kind)
  ocfg = optim.OptimConfig(optimizer="adamw", learning_rate=1e-2, schedule="constant")
  tx, schedule = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
  batch, groups = _groups_batch(kind)
  programs = aot.compile_run(model, tx, objectives.SFT(groups=groups), schedule, mesh, rules, batch_size=8,
                             inputs_length=16, targets_length=12, seed=0)
  init, compiled_step = programs
  assert [p.name for p in programs] == ["state init", "train step"]
  assert compiled_step.arguments > 0 and compiled_step.peak >= compiled_step.arguments
  assert compiled_step.aliased > 0  # the state is donated
  state, state_sh = step.create_train_state(model, tx, mesh, rules, jax.random.key(0))
  with jax.set_mesh(mesh):
    born = init.executable(jax.random.key(0))
  assert helpers.max_tree_rel_err(jax.device_get(born.params), jax.device_get(state.params)) == 0
  batch = jax.device_put(batch, sharding.batch_sharding(mesh, rules))
  trainer = step.jit_train_step(model, tx, objectives.SFT(groups=groups), schedule, mesh, rules, state_sh)
  want_state, want = trainer(state, batch, jax.random.key(1))
  got_state, got = compiled_step.executable(born, batch, jax.random.key(1))
  assert float(got["loss"]) == float(want["loss"]) and np.isfinite(float(got["loss"]))
  np.testing.assert_array_equal(got["task_nll"], want["task_nll"])
  assert helpers.max_tree_rel_err(jax.device_get(got_state.params), jax.device_get(want_state.params)) == 0


def test_the_dry_run_compiles_and_reports_times_and_memory(capsys):
  config = configs.from_command_line(["--config=configs/tiny.py:decoder", "--config.mesh.fsdp=4",
                                      "--config.sharding=fsdp"])
  assert train.dry_run(config, compile_step=True) == []
  out = capsys.readouterr().out
  assert "compile   on 8 cpu device(s)" in out
  for program in ("state init", "train step"):
    assert f"  {program}: lowered in " in out and "GiB at once" in out
  assert "dry run: OK, the state init and the train step compiled, nothing was written" in out


def test_a_mesh_this_machine_cannot_hold_is_a_problem_that_says_how_to_compile(capsys):
  config = configs.from_command_line(["--config=configs/tiny.py", "--config.mesh.fsdp=16", "--config.sharding=fsdp",
                                      "--config.data.batch_size=16"])
  problems = train.dry_run(config, compile_step=True)
  assert len(problems) == 1 and problems[0].startswith("compile: needs the config's mesh on this machine's devices")
  assert "8 devices do not divide into it" in problems[0]  # the mesh error itself
  assert "--xla_force_host_platform_device_count=16" in problems[0]
  assert "PROBLEM   compile:" in capsys.readouterr().out
