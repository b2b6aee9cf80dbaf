"""lm-evaluation-harness on an instruct_jax model: a trained workdir, or a checkpoint before fine-tuning.

    pip install -e ".[lm_eval]"
    python -m instruct_jax.evals.lm_eval --model instruct_jax --model_args workdir=/tmp/run[,step=N] \\
        --tasks hellaswag,gsm8k --batch_size 8 --output_path results/
    python -m instruct_jax.evals.lm_eval --model instruct_jax --model_args init_from=ckpt/llama --tasks ...

The command registers the model `instruct_jax` and runs lm-eval's own command line, so every lm-eval flag
works (--num_fewshot, --limit, --log_samples, --apply_chat_template, --include_path for local task YAMLs, ...).
`model_args`: workdir=DIR, step=N, init_from=DIR (as `generate` takes them), max_length (default: the
checkpoint's max_position_embeddings, else 2048, as lm-eval's `hf` model), batch_size.

`InstructJaxLM` reads text as lm-eval's `hf` model does, so the two agree on the same checkpoint: prompts are
tokenized as the Hugging Face tokenizer would (a decoder's begin-of-text where its tokenizer adds one, T5's inputs
ending with end-of-text), a context and its continuation are split as lm-eval's TemplateLM splits them, long
inputs lose their beginning, and `loglikelihood_rolling` uses lm-eval's own rolling windows. Scores come from one
jitted program per (batch, length bucket): rows are sorted by length and padded to the next multiple of 64, so a
task compiles a handful of shapes. `generate_until` decodes greedily with the KV-cache decoder and cuts the text at
the first stop string; `apply_chat_template` renders with the run's chat format (or the tokenizer's template).
"""
from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from instruct_jax import errors, sampling, sharding, step
from instruct_jax import plan as plan_lib
from instruct_jax.data import chat as chat_lib
from instruct_jax.data.transforms import DECODER_START_ID

MODEL_NAME = "instruct_jax"
LENGTH_BUCKET = 64
DEFAULT_MAX_LENGTH = 2048  # lm-eval's `hf` model's default when the checkpoint names none


def _bucket(n: int) -> int:
  return -(-max(n, 1) // LENGTH_BUCKET) * LENGTH_BUCKET


@functools.partial(jax.jit, static_argnames=("model", "mesh", "rules"))
def _score_rows(params, batch, *, model, mesh, rules):
  """Per row: the sum of log p(target) over the weighted positions, and whether every one is the argmax."""
  with sharding.activation_sharding(mesh, dict(rules)):
    logits = step.forward(model, params, batch, packed=False)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = batch["decoder_target_tokens"]
  picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  weights = batch["decoder_loss_weights"]
  greedy = (jnp.argmax(logp, axis=-1) == targets) | (weights == 0)
  return jnp.sum(picked * weights, axis=-1), jnp.all(greedy, axis=-1)


class InstructJaxLM(TemplateLM):
  """An lm-eval model over `plan.load(workdir, init_from, step)`."""

  def __init__(self, workdir: str | None = None, init_from: str | None = None, step: int | str | None = None,
               batch_size: int | str = 8, max_length: int | str | None = None, max_gen_toks: int | str = 256,
               **unused: Any):
    super().__init__()
    del unused  # lm-eval passes device, max_batch_size, ... for torch models
    self._loaded = plan_lib.load(workdir or None, init_from or None, None if step in (None, "") else int(step))
    self._model = self._loaded.model
    self._tok = self._loaded.tokenizer
    self.backend = "causal" if self._model.reply_follows_prompt else "seq2seq"
    self.batch_size = int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 8
    self._max_length = int(max_length) if max_length else (self._loaded.max_positions or DEFAULT_MAX_LENGTH)
    self.max_gen_toks = int(max_gen_toks)
    self._rules_key = tuple(sorted(self._loaded.rules.items()))
    self._source = init_from or workdir

  # --- what lm-eval asks of a TemplateLM ---
  @property
  def eot_token_id(self) -> int:
    return self._tok.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self._tok.bos_id if self._tok.bos_id >= 0 else self._tok.eos_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def tokenizer_name(self) -> str:
    return str(self._source).replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    """Ids as the checkpoint's Hugging Face tokenizer gives them: with special tokens (unless told otherwise, or the
    string already starts with begin-of-text), that is a decoder's begin-of-text where its tokenizer adds one and
    T5's end-of-text after the text."""
    del kwargs
    bos = self._tok.piece(self._tok.bos_id) if self._tok.bos_id >= 0 else None
    special = add_special_tokens if add_special_tokens is not None else not (bos and string.startswith(bos))
    ids = self._tok.encode(string).tolist()
    if not special:
      return ids
    if self.backend == "seq2seq":
      return ids + [self._tok.eos_id]
    return ([self._tok.bos_id] if self._tok.adds_bos else []) + ids

  def tok_decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(ids)

  def _features(self, context: list[int], continuation: list[int]) -> dict[str, np.ndarray]:
    """One scoring row, cut as lm-eval's `hf` model cuts it (the context loses its beginning)."""
    n = self._max_length
    if self.backend == "causal":
      seq = (context + continuation)[-(n + 1):]
      weights = np.zeros(len(seq) - 1, np.float32)
      weights[len(weights) - len(continuation):] = 1.0
      return {"decoder_input_tokens": np.asarray(seq[:-1], np.int32),
              "decoder_target_tokens": np.asarray(seq[1:], np.int32), "decoder_loss_weights": weights}
    target = continuation[-n:]
    return {"encoder_input_tokens": np.asarray(context[-n:], np.int32),
            "decoder_input_tokens": np.asarray([DECODER_START_ID] + target[:-1], np.int32),
            "decoder_target_tokens": np.asarray(target, np.int32),
            "decoder_loss_weights": np.ones(len(target), np.float32)}

  def _score(self, rows: list[dict[str, np.ndarray]], desc: str, disable_tqdm: bool) -> list[tuple[float, bool]]:
    """Scores `rows` longest first (so a batch pads little), in batches of `batch_size`; results in input order."""
    order = sorted(range(len(rows)), key=lambda i: -max(len(v) for v in rows[i].values()))
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    params = self._loaded.params
    with tqdm(total=len(rows), desc=desc, disable=disable_tqdm) as bar:
      for start in range(0, len(order), self.batch_size):
        chunk = order[start:start + self.batch_size]
        picked = [rows[i] for i in chunk] + [rows[chunk[0]]] * (self.batch_size - len(chunk))
        batch = {k: jnp.asarray(np.stack([np.pad(r[k], (0, _bucket(max(len(x[k]) for x in picked)) - len(r[k])))
                                          for r in picked])) for k in picked[0]}
        sums, greedy = _score_rows(params, batch, model=self._model, mesh=self._loaded.mesh, rules=self._rules_key)
        sums, greedy = np.asarray(sums), np.asarray(greedy)
        for j, i in enumerate(chunk):
          out[i] = (float(sums[j]), bool(greedy[j]))
        bar.update(len(chunk))
    return out  # type: ignore[return-value]

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
    del kwargs
    rows = [self._features(list(context), list(continuation)) for _, context, continuation in requests]
    results = self._score(rows, "loglikelihood", disable_tqdm)
    for (key, _, _), result in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, result)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    windows, owners = [], []
    for i, (string,) in enumerate(req.args for req in requests):
      for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id, max_seq_len=self._max_length,
          context_len=1)):
        windows.append(self._features(list(context), list(continuation)))
        owners.append(i)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self._score(windows, "loglikelihood_rolling", disable_tqdm)):
      totals[owner] += logprob
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Greedy (or sampled, when the task asks) continuations, cut at the first of the task's stop strings."""
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, req in enumerate(requests):
      groups[repr(sorted(req.args[1].items(), key=str))].append(i)
    out: list[str | None] = [None] * len(requests)
    with tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm) as bar:
      for members in groups.values():
        kwargs = dict(requests[members[0]].args[1])
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
        top_p, top_k = float(kwargs.pop("top_p", 1.0) or 1.0), int(kwargs.pop("top_k", 0) or 0)
        cfg = sampling.DecodeConfig(max_new_tokens=max_new, temperature=temperature, top_p=top_p, top_k=top_k,
                                    eos_id=self._tok.eos_id, pad_id=self._tok.pad_id)
        room = self._max_length - max_new if self.backend == "causal" else self._max_length
        if room < 1:
          raise errors.UserError(f"max_gen_toks={max_new} leaves no room for a prompt in max_length="
                                 f"{self._max_length}")
        for start in range(0, len(members), self.batch_size):
          chunk = members[start:start + self.batch_size]
          prompts = [self.tok_encode(requests[i].args[0])[-room:] for i in chunk]
          padded = prompts + [prompts[0]] * (self.batch_size - len(prompts))
          new = sampling.generate(self._model, self._loaded.params, padded, cfg, rng=jax.random.key(start),
                                  mesh=self._loaded.mesh, rules=self._loaded.rules)
          for i, ids in zip(chunk, new):
            text = self._tok.decode(ids)
            for stop in until:
              text = text.split(stop)[0] if stop else text
            out[i] = text
            self.cache_hook.add_partial("generate_until", requests[i].args, text)
          bar.update(len(chunk))
    return out  # type: ignore[return-value]

  # --- chat templates (lm-eval's --apply_chat_template) ---
  def _chat_format(self) -> chat_lib.ChatFormat:
    return self._loaded.conversation_format("--apply_chat_template")

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    if chat_template is False or chat_template is None:
      return None
    return self._chat_format().template

  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The conversation in the chat format. Without a generation prompt, lm-eval is prefilling the last (assistant)
    message, which is left open for the model to continue (transformers' continue_final_message)."""
    fmt = self._chat_format()
    if not add_generation_prompt and chat_history and chat_history[-1]["role"] == "assistant":
      return fmt.render(chat_history[:-1], add_generation_prompt=True) + chat_history[-1]["content"]
    return fmt.render(chat_history, add_generation_prompt=add_generation_prompt)


def register() -> None:
  """Makes `--model instruct_jax` known to lm-eval in this process."""
  from lm_eval.api import registry  # pylint: disable=g-import-not-at-top
  try:
    registry.get_model(MODEL_NAME)
  except (KeyError, ValueError):
    register_model(MODEL_NAME)(InstructJaxLM)


def main(argv: Sequence[str] | None = None) -> None:
  """lm-eval's command line with the `instruct_jax` model registered; user errors on one line."""
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=g-import-not-at-top
  register()
  if argv is not None:
    sys.argv = [sys.argv[0], *argv]
  try:
    cli_evaluate()
  except errors.UserError as e:
    errors.exit_with(e)


if __name__ == "__main__":
  main()
