"""A pretrained model's whole path, as a user runs it: import -> fine-tune -> generate / evaluate -> export, and
transformers generating the same text from the export as `instruct_jax.generate` from the workdir.

Tiny random transformers models (T5, Llama with a SentencePiece tokenizer.model, Llama-3-style with a byte-level
BPE tokenizer.json) and their tokenizers are made here; every step is the command line of the README.
"""
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import ROOT, _env, _losses

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from tests.convert import hf_models  # noqa: E402  (needs torch)

FINETUNE = str(ROOT / "configs" / "finetune.py")
SMALL = ["--config.total_steps=12", "--config.log_every=1", "--config.checkpoint_every=6", "--config.data.batch_size=8",
         "--config.data.inputs_length=72", "--config.data.targets_length=16", "--config.optim.learning_rate=3e-3",
         "--config.optim.warmup_steps=2"]
PROMPTS = ["Sort the numbers: 3 1 2", "Reverse: a b c"]
MAX_NEW = 10


def _cli(module: str, *args, expect_ok: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=timeout)
  if expect_ok:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def _instruction_files(tmp_path) -> str:
  """train/test JSONL files of {instruction, input, output} records: the data of configs/finetune.py."""
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(60):
    xs = [str(v) for v in rng.integers(0, 10, 3)]
    rows.append({"instruction": "Sort the numbers.", "input": " ".join(xs), "output": " ".join(sorted(xs))})
    rows.append({"instruction": "Reverse the letters.", "input": " ".join("abc"), "output": " ".join("cba")})
  for name, part in (("train", rows[:100]), ("test", rows[100:])):
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
  return f"train={tmp_path / 'train.jsonl'},test={tmp_path / 'test.jsonl'}"


def _bpe_llama(directory):
  """A Llama-3-style checkpoint: byte-level BPE tokenizer.json (BOS added by its post-processor) and a Llama."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  bot, eot = "<|begin_of_text|>", "<|end_of_text|>"
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  tok.train_from_iterator(hf_models.SPM_TEXTS, tokenizers.trainers.BpeTrainer(
      vocab_size=300, show_progress=False, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tok.add_special_tokens([bot, eot])
  bos, eos = tok.token_to_id(bot), tok.token_to_id(eot)
  tok.post_processor = tokenizers.processors.TemplateProcessing(single=f"{bot} $A", special_tokens=[(bot, bos)])
  config = transformers.LlamaConfig(**{**hf_models._LLAMA3, "vocab_size": tok.get_vocab_size(), "bos_token_id": bos,
                                       "eos_token_id": eos})
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  hf_models._redraw(model, 0)
  model.save_pretrained(directory, safe_serialization=True)
  tok.save(str(directory / "tokenizer.json"))
  (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": bot, "eos_token": eot,
                                                               "tokenizer_class": "PreTrainedTokenizerFast"}))
  return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (Hugging Face directory with its own tokenizer, model kind)."""
  tmp = tmp_path_factory.mktemp("hf")
  out = {}
  t5_dir = hf_models.save(hf_models.build("t5_flan"), tmp / "t5", "t5_flan")
  hf_models.train_spm(t5_dir / "spiece.model")
  out["t5"] = (t5_dir, "encoder_decoder")
  llama_dir = hf_models.save(hf_models.build("llama3"), tmp / "llama", "llama3")
  hf_models.train_spm(llama_dir / "tokenizer.model", llama_ids=True)
  out["llama"] = (llama_dir, "decoder")
  out["llama3_bpe"] = (_bpe_llama(tmp / "llama3_bpe"), "decoder")
  return out


def _ours(workdir, tmp_path) -> list[tuple[str, list[int]]]:
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  _cli("instruct_jax.generate", f"--workdir={workdir}", f"--prompts_file={prompts}", f"--output={tmp_path / 'g.jsonl'}",
       f"--max_new_tokens={MAX_NEW}")
  rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
  return [(r["output"], r["ids"]) for r in rows]


def _same_text(ours: str, theirs: str, spm: bool) -> bool:
  """Equal text; a SentencePiece decoder drops a leading run of blank pieces that transformers keeps all but one
  of (the README says so), so for SentencePiece tokenizers the leading whitespace is not compared."""
  return ours == theirs or (spm and ours == theirs.lstrip())


def _transformers(export_dir, kind: str) -> list[tuple[str, list[int]]]:
  auto = transformers.AutoModelForSeq2SeqLM if kind == "encoder_decoder" else transformers.AutoModelForCausalLM
  model = auto.from_pretrained(export_dir, dtype=torch.float32).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir)
  texts = []
  for prompt in PROMPTS:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      # T5: use_cache=False, because transformers sizes T5's decoder cache by the encoder's depth, which breaks
      # generate for this model (2 encoder, 3 decoder layers; see tests/convert/test_parity.py).
      out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                           do_sample=False, num_beams=1, use_cache=kind == "decoder")
    new = out[0, 1:] if kind == "encoder_decoder" else out[0, ids.shape[1]:]  # drop the start token / the prompt
    new = new.tolist()
    new = new[:new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new else new
    texts.append((tokenizer.decode(new, skip_special_tokens=True), new))
  return texts


@pytest.mark.parametrize("name,route", [pytest.param("t5", "converted", marks=pytest.mark.slow),
                                        pytest.param("llama", "hf", marks=pytest.mark.slow),
                                        pytest.param("llama3_bpe", "hf", marks=pytest.mark.slow)])
def test_import_finetune_generate_evaluate_export(checkpoints, tmp_path, name, route):
  hf_dir, kind = checkpoints[name]
  src = hf_dir
  if route == "converted":
    src = tmp_path / "imported"
    _cli("instruct_jax.convert", "--from", "hf", "--src", hf_dir, "--dst", src)
  work = tmp_path / "work"
  out = _cli("instruct_jax.train", f"--config={FINETUNE}", f"--workdir={work}", f"--config.init_from={src}",
             f"--config.data_paths.instruction_files.mine={_instruction_files(tmp_path)}", *SMALL).stdout
  assert f"Initialised weights from {src}" in out
  losses = _losses(work)
  assert sorted(losses) == list(range(1, 13)) and losses[12] < losses[1]
  recorded = json.loads((work / "model_config.json").read_text())
  assert recorded["kind"] == kind and recorded["source"] == str(src)

  ours = _ours(work, tmp_path)
  metrics_dir = tmp_path / "eval"
  _cli("instruct_jax.evaluate", f"--workdir={work}", "--tasks=mine", "--num_examples=4", f"--output_dir={metrics_dir}")
  metrics = json.loads((metrics_dir / "metrics.json").read_text())
  assert metrics["step"] == 12 and metrics["summary"]["by_task"]["tasks/mine"]["n"] == 4

  export = tmp_path / "export"
  assert "(step 12)" in _cli("instruct_jax.convert", "--to", "hf", "--src", work, "--dst", export).stdout
  if name == "t5":  # an earlier step on request
    assert "(step 6)" in _cli("instruct_jax.convert", "--to", "hf", "--src", work, "--step", 6, "--dst",
                              tmp_path / "export6").stdout
    assert _cli("instruct_jax.convert", "--to", "hf", "--src", work, "--step", 5, "--dst", tmp_path / "x",
                expect_ok=False).stderr.strip().endswith("has no checkpoint of step 5; it has steps [6, 12]")
  theirs = _transformers(export, kind)
  assert [ids for _, ids in theirs] == [ids for _, ids in ours]  # the same greedy tokens
  spm = name != "llama3_bpe"
  assert all(_same_text(o, t, spm) for (o, _), (t, _) in zip(ours, theirs)), (ours, theirs)
  if name == "llama3_bpe":  # the model's own byte-level BPE tokenizer went all the way through
    assert (work / "tokenizer" / "tokenizer.json").is_file() and (export / "tokenizer.json").is_file()


@pytest.mark.slow
def test_finetune_from_another_runs_workdir_in_the_scanned_layout(checkpoints, tmp_path):
  hf_dir, _ = checkpoints["llama"]
  first = tmp_path / "first"
  files = _instruction_files(tmp_path)
  _cli("instruct_jax.train", f"--config={FINETUNE}", f"--workdir={first}", f"--config.init_from={hf_dir}",
       f"--config.data_paths.instruction_files.mine={files}", *SMALL)
  second = tmp_path / "second"
  out = _cli("instruct_jax.train", f"--config={FINETUNE}", f"--workdir={second}", f"--config.init_from={first}",
             f"--config.data_paths.instruction_files.mine={files}", "--config.model.scan_layers=True", *SMALL).stdout
  assert f"Initialised weights from {first}" in out
  # The second run starts where the first ended (its weights, relaid out scanned): a lower first loss.
  assert _losses(second)[1] < _losses(first)[1]
  assert json.loads((second / "model_config.json").read_text())["config"]["scan_layers"] is True
  # The first run's tokenizer (the checkpoint's LLaMA tokenizer.model) came along.
  assert (second / "tokenizer" / "spm.model").read_bytes() == (hf_dir / "tokenizer.model").read_bytes()


@pytest.mark.slow
def test_user_mistakes_are_one_line_errors(checkpoints, tmp_path):
  hf_dir, _ = checkpoints["t5"]
  tiny = str(ROOT / "configs" / "tiny.py")

  def error(module, *args) -> str:
    proc = _cli(module, *args, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]

  assert error("instruct_jax.train", f"--config={tiny}", f"--workdir={tmp_path / 'a'}", "--config.data.mixing_capp=3"
               ) == ("error: --config.data.mixing_capp: no such config key; did you mean data.mixing_cap? (every key "
                     "is listed in instruct_jax/configs.py base())")
  line = error("instruct_jax.train", f"--config={tiny}", f"--workdir={tmp_path / 'b'}", f"--config.init_from={hf_dir}")
  assert line.startswith("error: config.model.size='tiny' contradicts config.init_from=") and "d_model" in line
  assert not (tmp_path / "b" / "tokenizer").exists()  # refused before anything was written
  line = error("instruct_jax.train", f"--config={FINETUNE}", f"--workdir={tmp_path / 'c'}",
               f"--config.init_from={hf_dir}", "--config.model.size=base")
  assert line.startswith("error: --config.model.size='base' contradicts config.init_from=")
  line = error("instruct_jax.train", f"--config={tiny}", f"--workdir={tmp_path / 'd'}",
               f"--config.tokenizer.path={tmp_path / 'missing.model'}")
  assert line.startswith("error: config.tokenizer.path: ") and "missing.model" in line
  assert not (tmp_path / "d" / "config.json").exists()  # refused before anything was written
  (tmp_path / "e").mkdir()
  line = error("instruct_jax.generate", f"--workdir={tmp_path / 'e'}", "--prompt=hi")
  assert line == f"error: {tmp_path / 'e'} is not a workdir written by instruct_jax.train (it has no config.json)"
  # A workdir whose run never reached a checkpoint.
  empty = tmp_path / "f"
  (empty / "checkpoints").mkdir(parents=True)
  for name in ("config.json", "model_config.json"):
    (empty / name).write_text("{}")
  (empty / "model_config.json").write_text(json.dumps({"kind": "decoder", "config": {}}))
  for module in ("instruct_jax.generate", "instruct_jax.evaluate"):
    args = ["--prompt=hi"] if module.endswith("generate") else []
    line = error(module, f"--workdir={empty}", *args)
    assert line.startswith(f"error: {empty} has no checkpoints yet"), line
  line = error("instruct_jax.convert", "--to", "hf", "--src", empty, "--dst", tmp_path / "x")
  assert line.startswith(f"error: {empty} has no checkpoints yet"), line
