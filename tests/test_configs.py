"""Configs that cannot lie: `configs.base()` holds every key the code reads; every shipped config validates, passes
`--dry_run` at its real size (7B and XXL included), and the run's own setup resolves it to the same plan; unknown and
missing keys, and model settings that contradict a checkpoint, are errors that name the key."""
import ast
import contextlib
import json
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from instruct_jax import configs, train
from instruct_jax.models import build, decoder

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SHARED_SUPERNI = ROOT.parent / "shared" / "data" / "natural-instructions"
SHIPPED = [("base.py", None), ("quickstart.py", None), ("quickstart.py", "decoder"), ("tiny.py", None),
           ("tiny.py", "decoder"), ("finetune.py", None),
           *[("recipes/flan_t5.py", s) for s in ("small", "base", "large", "xl", "xxl")],  # base, large: slow
           *[("decoder_llama.py", s) for s in ("1b", "7b")], ("flan2021.py", "small"), ("recipes/zephyr.py", None)]
SLOW_DRY_RUNS = {("recipes/flan_t5.py", "base"), ("recipes/flan_t5.py", "large")}  # small, xl and xxl cover them
PUBLISHED_M = {"7b": 6_738.4}  # LLaMA-2-7B (vocabulary 32000 as configs/decoder_llama.py trains it): 6.74B


def test_every_config_file_is_covered():  # (the other recipes: tests/test_recipes.py)
  assert {f.name for f in CONFIG_DIR.glob("*.py")} == {name for name, _ in SHIPPED if "/" not in name}


@pytest.fixture(scope="module")
def imported_dir(tmp_path_factory):
  """An imported checkpoint directory (tiny decoder + its SentencePiece tokenizer) for configs/finetune.py."""
  from instruct_jax import convert  # pylint: disable=g-import-not-at-top
  from instruct_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  out = tmp_path_factory.mktemp("imported")
  tok = tokenizer_lib.train(["sort the numbers 3 1 2", "reverse the list a b c", "count the items"] * 50,
                            vocab_size=60, out_dir=out / "spm")
  model = build.from_config(decoder.config_for("tiny", vocab_size=128))
  params = jax.tree.map(np.asarray, nn.meta.unbox(model.init(jax.random.key(0))))
  convert.save_imported(convert.Pretrained(model.config, params, "test"), out / "ckpt")
  tok.save(out / "ckpt")
  return out / "ckpt"


@pytest.fixture(scope="module")
def flan_tfds_dir(tmp_path_factory):
  """TFDS data for configs/flan2021.py: the prepared super_glue stand-in (the rest is mocked; tests/flan_data.py)."""
  from tests import flan_data  # pylint: disable=g-import-not-at-top  (imports TFDS's builder modules)
  out = str(tmp_path_factory.mktemp("flan_tfds"))
  flan_data.prepare_super_glue(out)
  return out


def _shipped(name: str, arg: str | None, imported_dir, flan_tfds_dir=None) -> list[str]:
  """Command-line overrides a user adds to run the shipped config (what its docstring asks for)."""
  if name == "flan2021.py":
    return [f"--config.data_paths.tfds_data_dir={flan_tfds_dir}", "--config.eval.held_out_cluster=nli"]
  if name == "base.py":
    return ["--config.model.kind=decoder", "--config.model.size=tiny"]
  if name == "finetune.py":
    return [f"--config.init_from={imported_dir}", "--config.data.mixture=builtin"]
  if name == "recipes/flan_t5.py":
    return [f"--config.data_paths.superni_dir={SHARED_SUPERNI}"]
  if name == "recipes/zephyr.py":  # a few UltraFeedback-style pairs (conversational responses, the prompt repeated)
    path = imported_dir.parent / "uf.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Name a prime above {i}.", "chosen": [
        {"role": "user", "content": f"Name a prime above {i}."}, {"role": "assistant", "content": "101"}],
                                        "rejected": [{"role": "user", "content": f"Name a prime above {i}."},
                                                     {"role": "assistant", "content": "100"}]}) + "\n"
                            for i in range(40)))
    return [f"--config.data_paths.preference_files.ultrafeedback={path}"]
  return []


def plan_summary(p) -> dict:
  """What a run's plan resolved, comparable between two resolutions (a temporary tokenizer copy's path aside)."""
  tok = p.tokenizer
  return dict(
      mesh=dict(p.mesh.shape), rules=p.rules, pretrained=p.pretrained and p.pretrained.config, model=p.model.config,
      tokenizer=tok and (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id),
      chat=p.chat and (p.chat.name, p.chat.template),
      added=p.added and p.added.tokens, attention=p.attention, data=p.data, task_names=p.task_names, rates=p.rates,
      evaluators=p.evaluators and [(e.name, e.every, e.before_training, e.superni, [r["id"] for r in e.rows])
                                   for e in p.evaluators],
      objective=p.objective, optim=p.optim)


def assert_the_run_resolves_as_the_dry_run(config, workdir) -> None:
  """The run's setup (`plan.resolve` as the trainer calls it: every error raised) passes and resolves what the dry
  run printed. A mesh this machine lacks is the dry run's abstract one (the run's own needs the pod)."""
  from instruct_jax import plan as plan_lib  # pylint: disable=g-import-not-at-top
  dry = plan_lib.resolve(config, dry=True)
  assert dry.problems == []
  run = plan_lib.resolve(config, str(workdir), mesh=dry.mesh if dry.mesh_error else None)
  assert plan_summary(run) == plan_summary(dry)
  assert not pathlib.Path(workdir).exists()  # resolving writes nothing


@pytest.mark.parametrize("name,arg", [
    pytest.param(n, a, marks=pytest.mark.slow) if (n, a) in SLOW_DRY_RUNS else (n, a) for n, a in SHIPPED],
    ids=[f"{n}:{a}" for n, a in SHIPPED])
def test_shipped_config_validates_and_passes_the_dry_run(name, arg, imported_dir, capsys, request, tmp_path):
  if name == "recipes/flan_t5.py" and not SHARED_SUPERNI.is_dir():
    pytest.skip(f"SuperNI data not found at {SHARED_SUPERNI}")
  doc = (CONFIG_DIR / name).read_text().split(chr(34) * 3)[1]
  assert "python -m instruct_jax" in doc and "Hardware" in doc and "Runtime" in doc and "Expected result" in doc
  path = f"{CONFIG_DIR / name}" + (f":{arg}" if arg else "")
  data = contextlib.nullcontext()
  flan_dir = None
  if name == "flan2021.py":  # every Flan dataset, without downloads: mocked builders and a prepared stand-in
    from tests import flan_data  # pylint: disable=g-import-not-at-top
    flan_dir = request.getfixturevalue("flan_tfds_dir")
    data = flan_data.mocked(flan_dir)
  config = configs.from_command_line([f"--config={path}", *_shipped(name, arg, imported_dir, flan_dir)])
  with data:
    problems = train.dry_run(config, num_devices=None)
    out = capsys.readouterr().out
    assert problems == [], out
    assert_the_run_resolves_as_the_dry_run(config, tmp_path / "workdir")
  if name == "flan2021.py":  # trains on every cluster but the held-out one, evaluates that one
    assert "mixture 'flan2021_no_nli': 58 tasks" in out and "glue/rte" not in out.split("evals")[0], out
  assert "dry run: OK" in out and "memory    per device" in out and out.count("example   ") == 3
  assert re.search(r"^attention '\w+' on cpu: xla in training, xla in scoring", out, re.M), out
  assert re.search(r"^flops     [\d.e+]+ model FLOPs per step", out, re.M), out
  if arg in PUBLISHED_M:
    assert f"{PUBLISHED_M[arg]:,.1f}M parameters" in out


def test_dry_run_on_the_command_line_writes_nothing_and_reports_problems(tmp_path):
  env = {"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
  cmd = [sys.executable, "-m", "instruct_jax.train", f"--config={CONFIG_DIR / 'decoder_llama.py'}:7b", "--dry_run",
         f"--workdir={tmp_path / 'w'}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # One CPU device here: the 8-way FSDP mesh is abstract, and memory is per device of that mesh.
  assert "over 8 devices (abstract: this machine has 1)" in proc.stdout
  params_gib = float(re.search(r"parameters ([\d.]+) GiB", proc.stdout).group(1))
  assert params_gib == pytest.approx(6_738.4e6 * 4 / 8 / 2**30, rel=1e-3)
  assert not (tmp_path / "w").exists()
  proc = subprocess.run(cmd + ["--config.data.mixture=no_such_mixture"], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=300)
  assert proc.returncode == 1 and "PROBLEM   data:" in proc.stdout and "no_such_mixture" in proc.stdout


def test_validate_names_unknown_and_missing_keys():
  c = configs.base()
  configs.validate(c)
  c.data.mixing_capp = 3
  with pytest.raises(configs.ConfigError, match=r"^config\.data\.mixing_capp: no such config key; did you mean "
                                                r"data\.mixing_cap\?"):
    configs.validate(c)
  with pytest.raises(configs.ConfigError, match=r"^--config\.data\.mixing_capp: "):
    configs.validate(c, flag_keys=["data.mixing_capp"])
  c = configs.base()
  del c.eval["num_beams"]
  with pytest.raises(configs.ConfigError, match=r"lacks key\(s\) \['eval.num_beams'\]"):
    configs.validate(c)
  c = configs.base()  # the open maps take the user's names
  c.data_paths.instruction_files.mine = "mine.jsonl"
  c.model.overrides.d_model = 64
  configs.validate(c)
  c.data_paths.instruction_files.other = 3
  with pytest.raises(configs.ConfigError, match="instruction_files.other: expected a file path"):
    configs.validate(c)


def test_a_workdirs_config_json_reads_back_over_the_base():
  c = configs.load(CONFIG_DIR / "quickstart.py")
  blob = json.loads(c.to_json_best_effort())
  del blob["eval"]["num_beams"]  # an older run's config lacks a newer key
  back = configs.from_json(blob)
  assert back.data.render.template_ids == (0, 1, 2, 3, 4, 5, 6, 7) and back.eval.num_beams == 1
  configs.validate(back)


def _section(**fields) -> ml_collections.ConfigDict:
  s = configs.base().model
  for k, v in fields.items():
    s[k] = v
  return s


def test_model_section_errors_name_the_key():
  with pytest.raises(build.ModelConfigError, match="config.model.kind and config.model.size name the model"):
    build.from_section(_section())
  with pytest.raises(build.ModelConfigError, match=r"overrides\.d_modle: DecoderConfig has no field 'd_modle'; "
                                                   r"did you mean d_model\?"):
    build.from_section(_section(kind="decoder", size="tiny", overrides=ml_collections.ConfigDict({"d_modle": 8})))
  with pytest.raises(build.ModelConfigError, match=r"overrides\.dtype: set config\.model\.dtype instead"):
    build.from_section(_section(kind="decoder", size="tiny", overrides=ml_collections.ConfigDict({"dtype": "x"})))
  model = build.from_section(_section(kind="decoder", size="tiny", dtype="bfloat16", scan_layers=True), vocab_size=256)
  assert model.config.vocab_size == 256 and model.config.scan_layers and model.config.dtype == jax.numpy.bfloat16


def test_settings_that_contradict_the_checkpoint_are_errors_and_runtime_ones_apply():
  ckpt = decoder.config_for("tiny", vocab_size=128)
  with pytest.raises(build.ModelConfigError, match=r"^--config\.model\.size='1b' contradicts SRC \(vocab|d_model"):
    build.from_section(_section(size="1b"), checkpoint=ckpt, source="SRC", flag_keys=["model.size"])
  with pytest.raises(build.ModelConfigError, match=r"config\.model\.kind='encoder_decoder' contradicts SRC"):
    build.from_section(_section(kind="encoder_decoder"), checkpoint=ckpt, source="SRC")
  with pytest.raises(build.ModelConfigError, match=r"config\.model\.overrides\.num_layers=3 contradicts SRC"):
    build.from_section(_section(overrides=ml_collections.ConfigDict({"num_layers": 3})), checkpoint=ckpt, source="SRC")
  agreeing = _section(kind="decoder", size="tiny", overrides=ml_collections.ConfigDict({"num_layers": 2}),
                      remat_policy="full", dropout_rate=0.1)
  model = build.from_section(agreeing, checkpoint=ckpt, source="SRC")
  assert (model.config.remat_policy, model.config.dropout_rate, model.config.d_model) == ("full", 0.1, 64)


def test_microbatches_must_divide_the_batch_naming_both_keys():
  c = configs.base()
  c.num_microbatches = 3
  with pytest.raises(configs.ConfigError, match=r"^--config\.num_microbatches=3: must be a positive integer dividing "
                                                r"config\.data\.batch_size=8$"):
    configs.validate(c, flag_keys=["num_microbatches"])
  c.num_microbatches = 4
  configs.validate(c)


def test_the_code_reads_only_keys_that_the_base_has():
  """Every `config.a.b` chain in the programs exists in base(); no `.get(key, default)` on a config."""
  known = set(configs.leaves(configs.base()))
  prefixes = {k.rsplit(".", i)[0] for k in known for i in range(k.count(".") + 1)}
  methods = {"to_dict", "to_json_best_effort", "unlocked", "items", "keys", "lock"}
  files = [ROOT / "instruct_jax" / f for f in ("train.py", "plan.py", "loop.py", "dry_run.py", "evaluate.py",
                                             "generate.py", "workdir.py", "predict.py")]
  chains = 0
  for file in files:
    for node in ast.walk(ast.parse(file.read_text())):
      if not isinstance(node, ast.Attribute):
        continue
      parts, value = [], node
      while isinstance(value, ast.Attribute):
        parts.insert(0, value.attr)
        value = value.value
      if not (isinstance(value, ast.Name) and value.id in ("config", "eval_cfg")):
        continue
      parts = (["eval"] if value.id == "eval_cfg" else []) + parts
      assert parts[-1] != "get", f"{file.name}: config...get() hides a missing key"
      path = ".".join(p for p in parts if p not in methods)
      if not path:  # a method of the whole config
        continue
      while path not in prefixes and "." in path and path.rsplit(".", 1)[0] in known:
        path = path.rsplit(".", 1)[0]  # an attribute of a leaf value (an open map's entry, a string's method)
      assert path in prefixes, f"{file.name} reads config.{'.'.join(parts)}, which base() lacks"
      chains += 1
  assert chains > 150  # (about 200: the trainer, its dry run and resolution, evaluate, generate, predict)


ABLATIONS = ["templates.py", "data_fraction.py"]


def test_every_ablation_is_covered():
  assert {f.name for f in (CONFIG_DIR / "ablations").glob("*.py")} == set(ABLATIONS)


@pytest.mark.parametrize("name", ABLATIONS)
def test_shipped_ablations_load_and_every_points_command_parses(name):
  from instruct_jax import sweep
  path = str(CONFIG_DIR / "ablations" / name)
  configs.validate(configs.load(path))
  s = sweep.load(path)  # grid keys and plots checked against the base config
  commands = {n: sweep.command(s, "/tmp/sweep", n, o) for n, o in sweep.points(s.grid)}
  sweep.check_commands(s, commands)  # parsed as the trainer parses them
  assert len(commands) == 8 and s.replicate == "seed" and s.tokenizer and len(s.plots) == 2


@pytest.mark.parametrize("mixture,cluster", [("builtin", "check"), ("builtin_no_order", "check")])
def test_a_mixture_that_trains_on_the_held_out_cluster_is_refused(mixture, cluster, capsys):
  config = configs.from_command_line([f"--config={CONFIG_DIR / 'tiny.py'}", f"--config.data.mixture={mixture}",
                                      f"--config.eval.held_out_cluster={cluster}"])
  problems = train.dry_run(config, num_devices=None)
  capsys.readouterr()
  assert len(problems) == 1 and f"config.eval.held_out_cluster={cluster!r}" in problems[0], problems
  assert f"builtin_no_{cluster}" in problems[0]
