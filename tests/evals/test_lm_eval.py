"""lm-evaluation-harness on instruct_jax models, against lm-eval's own `hf` model on the exported checkpoint: local
tasks (YAML over local JSON files) of each request type, the same accuracies and log-likelihoods within 1e-4."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from lm_eval.tasks import TaskManager  # noqa: E402

from instruct_jax import configs, train  # noqa: E402
from instruct_jax.evals import lm_eval as ours  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORDS = ["red", "blue", "green", "tea", "stone", "river", "seven", "nine", "apple", "cloud"]


def _tasks(directory: pathlib.Path) -> pathlib.Path:
  """Three local tasks: multiple choice (loglikelihood), generation (generate_until) and perplexity (rolling)."""
  rng = np.random.default_rng(0)
  choice, gen, text = [], [], []
  for i in range(12):
    a, b, c = rng.choice(WORDS, 3, replace=False)
    choice.append({"question": f"Which word is {a}?", "choices": [f" {a}", f" {b}", f" {c} {a}"], "label": 0})
    gen.append({"question": f"Repeat: {a} {b}", "answer": f"{a} {b}"})
    text.append({"text": " ".join(rng.choice(WORDS, 8 + 7 * i))})  # up to 85 words: several rolling windows
  directory.mkdir(parents=True, exist_ok=True)
  for name, rows in (("choice", choice), ("gen", gen), ("text", text)):
    (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  common = lambda name: (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {directory / name}.jsonl\n"
                         "test_split: test\n")
  (directory / "ij_choice.yaml").write_text(
      "task: ij_choice\n" + common("choice") + "output_type: multiple_choice\n"
      'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
      "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
  (directory / "ij_gen.yaml").write_text(
      "task: ij_gen\n" + common("gen") + "output_type: generate_until\n"
      'doc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: "{{answer}}"\n'
      'generation_kwargs:\n  until: ["\\n", "Q:"]\n  max_gen_toks: 6\n  do_sample: false\n'
      "metric_list:\n  - metric: exact_match\n")
  (directory / "ij_text.yaml").write_text(
      "task: ij_text\n" + common("text") + "output_type: loglikelihood_rolling\n"
      'doc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n')
  return directory


@pytest.fixture(scope="module", params=["decoder", "t5"])
def exported(request, tmp_path_factory):
  """A tiny decoder or T5 trained a few steps here (its own SentencePiece tokenizer), and its Hugging Face export."""
  root = tmp_path_factory.mktemp(f"lm_eval_{request.param}")
  config = configs.load(ROOT / "configs" / "tiny.py", request.param)
  config.total_steps, config.checkpoint_every, config.eval.num_examples = 6, 0, 0
  train.train_and_evaluate(config, str(root / "run"))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.convert", "--to=hf", f"--src={root / 'run'}",
                         f"--dst={root / 'hf'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return root


def _hf_model(path):
  """lm-eval's `hf` model on the export. Under transformers 5, T5Config always says tie_word_embeddings=True and
  lm-eval 0.4.13 calls model.tie_weights(), which replaces an untied T5's output layer (T5 v1.1, Flan-T5, ours)
  by its embedding; the exported output layer is put back, so the comparison is with the checkpoint as saved."""
  import torch  # pylint: disable=g-import-not-at-top
  from lm_eval.models.huggingface import HFLM  # pylint: disable=g-import-not-at-top
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
  model = HFLM(pretrained=str(path), dtype="float32", max_length=48, device="cpu", batch_size=4)
  saved = load_file(str(path / "model.safetensors"))
  shared = getattr(model.model, "shared", None)
  if "lm_head.weight" in saved and shared is not None and model.model.lm_head.weight is shared.weight:
    model.model.lm_head.weight = torch.nn.Parameter(saved["lm_head.weight"])
  return model


def _assert_a_near_tie(exported, context: str) -> None:
  """Greedy texts that differ must come from a near-tie: at the first id where transformers' greedy decoding
  (one prompt, no padding) and ours part, the two tokens' logits differ by less than 1e-3 in transformers' own
  scores (a tiny random model's logits are close; batching with padding moves them by float noise)."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from instruct_jax import sampling  # pylint: disable=g-import-not-at-top
  model = ours.InstructJaxLM(workdir=str(exported / "run"), max_length=48)
  ids = model.tok_encode(context)
  cfg = sampling.DecodeConfig(max_new_tokens=6, eos_id=model.eot_token_id, pad_id=model._tok.pad_id)
  mine = sampling.generate(model._model, model._loaded.params, [ids], cfg, rng=jax.random.key(0),
                           mesh=model._loaded.mesh, rules=model._loaded.rules)[0]
  auto = (transformers.AutoModelForCausalLM if model.backend == "causal" else transformers.AutoModelForSeq2SeqLM)
  hf = _hf_model(exported / "hf").model if model.backend != "causal" else auto.from_pretrained(exported / "hf")
  out = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, output_scores=True,
                    return_dict_in_generate=True)
  theirs = out.sequences[0, len(ids) if model.backend == "causal" else 1:].tolist()
  k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), None)
  if k is None:
    return  # one prompt alone, both decode the same ids: the difference came from lm-eval's padded batch
  scores = out.scores[k][0]
  assert abs(float(scores[theirs[k]] - scores[mine[k]])) < 1e-3, (context, mine, theirs)


def _evaluate(model, model_args, tasks_dir, **kw):
  return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=["ij_choice", "ij_gen", "ij_text"],
                                 task_manager=TaskManager(include_path=str(tasks_dir)), log_samples=True,
                                 batch_size=4, **kw)


@pytest.mark.slow  # a tiny run, its export, and both models on three tasks: 40 s a model kind
def test_agrees_with_lm_evals_hf_model_on_the_export(exported, tmp_path):
  tasks = _tasks(tmp_path / "tasks")
  theirs = _evaluate(_hf_model(exported / "hf"), None, tasks)
  mine = _evaluate(ours.InstructJaxLM(workdir=str(exported / "run"), max_length=48, batch_size=4), None, tasks)
  for task in ("ij_choice", "ij_gen", "ij_text"):
    a, b = theirs["results"][task], mine["results"][task]
    for metric in ("acc,none", "acc_norm,none", "exact_match,none"):
      if metric in a:
        assert a[metric] == b[metric], (task, metric, a, b)
    if "word_perplexity,none" in a:
      assert b["word_perplexity,none"] == pytest.approx(a["word_perplexity,none"], rel=1e-4)
    for sa, sb in zip(theirs["samples"][task], mine["samples"][task]):
      assert sa["doc"] == sb["doc"]
      for ra, rb in zip(sa["resps"], sb["resps"]):
        if task == "ij_gen" and ra != rb:  # the same greedy text, cut at the same stop string, but for near-ties
          _assert_a_near_tie(exported, sa["arguments"][0][0])
        elif task == "ij_choice":
          assert rb[0][0] == pytest.approx(ra[0][0], abs=1e-4) and rb[0][1] == ra[0][1]
        else:  # a document's whole log-likelihood (up to ~1100 nats here): float32 sums agree to 1e-6 relative
          assert rb[0] == pytest.approx(ra[0], abs=1e-4, rel=1e-6)
  # The windows really were cut (85 words > 48 tokens), and generation made text.
  assert any(len(s["doc"]["text"].split()) > 48 for s in mine["samples"]["ij_text"])
  assert any(r[0] for s in mine["samples"]["ij_gen"] for r in s["resps"])


@pytest.mark.slow  # lm-eval's command line in a subprocess: 15 s
def test_the_command_line_runs_a_workdir(exported, tmp_path):
  tasks = _tasks(tmp_path / "tasks")
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_DATASETS_OFFLINE="1")
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.evals.lm_eval", "--model", "instruct_jax",
                         "--model_args", f"workdir={exported / 'run'},max_length=48", "--tasks", "ij_choice",
                         "--include_path", str(tasks), "--batch_size", "4", "--output_path", str(tmp_path / "out")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ij_choice" in proc.stdout and "acc" in proc.stdout
  results, = (tmp_path / "out").rglob("results_*.json")
  blob = json.loads(results.read_text())
  assert 0 <= blob["results"]["ij_choice"]["acc,none"] <= 1 and blob["config"]["model"] == "instruct_jax"


@pytest.mark.slow  # a chat run, its export and both models' templates: 25 s
def test_chat_prompts_match_lm_evals_hf_model_on_the_export(tmp_path):
  lines = [json.dumps({"messages": [{"role": "user", "content": f"Name {w}."}, {"role": "assistant", "content": w}]})
           for w in WORDS * 3]
  (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
  config = configs.load(ROOT / "configs" / "tiny.py", "decoder")
  config.total_steps, config.checkpoint_every, config.eval.num_examples = 2, 0, 0
  config.data_paths.chat_files["talk"] = str(tmp_path / "chat.jsonl")
  config.data.mixture, config.data.chat_format = "chat", "chatml"
  train.train_and_evaluate(config, str(tmp_path / "run"))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "instruct_jax.convert", "--to=hf", f"--src={tmp_path / 'run'}",
                         f"--dst={tmp_path / 'hf'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  mine = ours.InstructJaxLM(workdir=str(tmp_path / "run"), max_length=64)
  theirs = _hf_model(tmp_path / "hf")
  history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
             {"role": "assistant", "content": "red"}, {"role": "user", "content": "Another?"}]
  prefilled = history + [{"role": "assistant", "content": "It is"}]  # lm-eval's prefill: the reply left open
  for conversation, generation_prompt in ((history, True), (prefilled, False)):
    a = mine.apply_chat_template(conversation, add_generation_prompt=generation_prompt)
    b = theirs.apply_chat_template(conversation, add_generation_prompt=generation_prompt)
    assert mine.tok_encode(a) == theirs.tok_encode(b), (a, b)  # the same ids, begin-of-text included once
  assert "<|im_start|>assistant\n" in mine.apply_chat_template(history) and mine.chat_template(True)
