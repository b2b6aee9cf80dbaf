"""The recipes of configs/recipes/: each passes --dry_run at its real size (Flan-T5's every size: test_configs),
and each trains two steps, with tiny model overrides, on the data that feeds it: the output of its synthetic
method (Self-Instruct -> Alpaca, Evol-Instruct -> WizardLM, Orca -> OpenOrca) in its own prompt format, and
for Flan-T5 the SuperNI task files of ../shared."""
import json
import pathlib
import subprocess
import sys

import pytest

from instruct_jax import configs, train
from instruct_jax.synthetic import evol_instruct, orca, self_instruct
from tests import test_configs
from tests.synthetic.fakes import TOPICS, scripted_backend
from tests.synthetic.test_methods import SEED_TASKS
from tests.test_train import _env, _losses

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ROOT / "configs" / "recipes"
# recipe -> (synthetic method feeding it, instruction-file name its docstring uses, parameters in millions,
#            text every rendered training prompt of that method's output starts with)
CASES = {
    "alpaca": ("self_instruct", "alpaca", 6_738.4, "### Instruction:"),
    "wizardlm": ("evol_instruct", "evol", 6_738.4, " USER: "),
    "openorca": ("orca", "orca", 7_241.7, "<|im_start|>user\\n"),
}
TINY = ["--config.model.size=tiny", "--config.model.dtype=float32", "--config.model.remat_policy=none",
        "--config.total_steps=2", "--config.log_every=1", "--config.checkpoint_every=0",
        "--config.data.batch_size=8", "--config.data.inputs_length=384", "--config.data.targets_length=128",
        "--config.tokenizer.vocab_size=400", "--config.tokenizer.train_examples=200", "--config.mesh.fsdp=1",
        "--config.optim.warmup_steps=0"]


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """method -> its output file, made by the real method code with the scripted LM of tests/synthetic."""
  d = tmp_path_factory.mktemp("synthetic")
  seeds = _write(d / "seeds.jsonl", [{"id": f"seed_{i}", "instruction": ins, "is_classification": c,
                                      "instances": [{"input": inp, "output": out}]}
                                     for i, (ins, inp, out, c) in enumerate(SEED_TASKS)])
  colls = ["cot", "niv2", "t0", "flan2021"]
  queries = _write(d / "queries.jsonl", [{"id": f"q{i}", "collection": colls[i % 4], "task": f"task{i % 7}",
                                          "instruction": f"Question {i}: what is notable about {TOPICS[i % 30]}?",
                                          "input": f"Context {i}." if i % 3 else "", "multiple_choice": i % 2 == 0}
                                         for i in range(50)])
  runs = {"self_instruct": lambda out: self_instruct.run(self_instruct.SelfInstructConfig(seeds, 24, requests_per_step=4),
                                                         scripted_backend(), out),
          "evol_instruct": lambda out: evol_instruct.run(evol_instruct.EvolConfig(seeds, 12, rounds=3, chunk_size=5),
                                                         scripted_backend(), out),
          "orca": lambda out: orca.run(orca.OrcaConfig(queries, 40, chunk_size=16), scripted_backend(), out)}
  files = {}
  for method, run in runs.items():
    run(str(d / method))
    files[method] = str(d / method / f"{method}.jsonl")
    assert sum(1 for _ in open(files[method], encoding="utf-8")) >= 8, method
  return files


def _flags(recipe, synthetic) -> list[str]:
  method, name, _, _ = CASES[recipe]
  return [f"--config={RECIPES / (recipe + '.py')}", f"--config.data_paths.instruction_files.{name}={synthetic[method]}"]


def test_every_recipe_is_covered():
  from tests.test_configs import SHIPPED  # pylint: disable=g-import-not-at-top
  covered = set(CASES) | {pathlib.Path(n).stem for n, _ in SHIPPED if n.startswith("recipes/")}
  assert {p.stem for p in RECIPES.glob("*.py")} == covered


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_passes_the_dry_run_at_its_real_size(recipe, synthetic, capsys, tmp_path):
  doc = (RECIPES / f"{recipe}.py").read_text().split(chr(34) * 3)[1]
  for part in ("python -m instruct_jax.train", "python -m instruct_jax.synthetic", "Published", "Hardware",
               "Runtime", "Expected result"):
    assert part in doc, part
  config = configs.from_command_line(_flags(recipe, synthetic))
  problems = train.dry_run(config, num_devices=None)
  out = capsys.readouterr().out
  assert problems == [], out
  assert f"{CASES[recipe][2]:,.1f}M parameters" in out and "dry run: OK" in out
  test_configs.assert_the_run_resolves_as_the_dry_run(config, tmp_path / "workdir")
  # The rendered examples it prints are the synthetic method's records in the recipe's prompt format.
  prompts = [line for line in out.splitlines() if line.startswith("  inputs:  ")]
  assert len(prompts) == 3 and all(CASES[recipe][3] in p for p in prompts), prompts


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(CASES))
def test_recipe_trains_two_steps_on_its_synthetic_method_output(recipe, synthetic, tmp_path):
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "instruct_jax.train", *_flags(recipe, synthetic), *TINY, f"--workdir={workdir}"]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  losses = _losses(workdir)
  assert sorted(losses) == [1, 2] and all(v == v and v > 0 for v in losses.values())
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["data"]["chat_format"] == configs.load(RECIPES / f"{recipe}.py").data.chat_format
  if recipe == "openorca":  # trained here, the tokenizer keeps ChatML's markers whole
    pieces = {line.split("\t")[0] for line in (workdir / "tokenizer" / "spm.vocab").read_text().splitlines()}
    assert {"<|im_start|>", "<|im_end|>"} <= pieces


@pytest.mark.slow
def test_flan_t5_recipe_trains_two_steps_on_superni_tasks(tmp_path):
  from tests.test_configs import SHARED_SUPERNI  # pylint: disable=g-import-not-at-top
  if not SHARED_SUPERNI.is_dir():
    pytest.skip(f"SuperNI data not found at {SHARED_SUPERNI}")
  workdir = tmp_path / "w"
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={RECIPES / 'flan_t5.py'}:small",
         f"--config.data_paths.superni_dir={SHARED_SUPERNI}", "--config.data_paths.superni_train_instances=4",
         "--config.eval.num_examples=0", f"--workdir={workdir}",
         *[f for f in TINY if "inputs_length" not in f and "targets_length" not in f and "fsdp" not in f],
         "--config.data.inputs_length=256", "--config.data.targets_length=32"]
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  losses = _losses(workdir)
  assert sorted(losses) == [1, 2] and all(v == v and v > 0 for v in losses.values())
  assert json.loads((workdir / "config.json").read_text())["data"]["mixture"] == "niv2_train"
