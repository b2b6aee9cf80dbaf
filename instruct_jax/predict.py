"""Text-level predict functions built from a model, its parameters and a tokenizer.

Evaluators and synthetic-data generators receive these functions and never import models:

    generate_fn(prompts: list[str]) -> list[str]                      decoding with the KV cache
    loglik_fn(prompts: list[str], continuations: list[str]) -> array  sum of log p(continuation + EOS)

A generate function made `with_finish` also says why each row ended: "length" when it used all of
max_new_tokens without emitting end-of-text, else "stop". `instruction_prompts` renders Alpaca-style
{instruction, input} records the way a run trained on its instruction files; `chat_prompts` renders
conversations with the run's chat format (`chat_format`), and `predict_fns(..., chat_format=)` reads such prompts
(special strings as their ids) and stops a decoder at the format's end of turn.

Work is cut into fixed-size batches (the last one padded) and prompt lengths are bucketed, so a long
evaluation compiles a handful of programs rather than one per batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from instruct_jax import losses, sampling, sharding, step
from instruct_jax.data import chat as chat_lib
from instruct_jax.data import pipeline as pipeline_lib
from instruct_jax.data import render as render_lib
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib
from instruct_jax.models import families

GenerateFn = Callable[[Sequence[str]], list[str]]
LoglikFn = Callable[[Sequence[str], Sequence[str]], np.ndarray]


@dataclasses.dataclass(frozen=True)
class PredictFns:
  """What an evaluator is given: functions of text, built from a model by `predict_fns`."""
  generate: Callable[[Sequence[str]], list[str]]
  loglik: Callable | None = None  # for rank classification of answer options


def _chunks(items: Sequence, size: int):
  for i in range(0, len(items), size):
    yield items[i:i + size]


def finish_reason(new_ids: Sequence[int], max_new_tokens: int) -> str:
  """"length" when a row used its whole budget (so it never emitted end-of-text), else "stop".

  `sampling.generate` cuts a row at its end-of-text, so a row that emitted one is shorter than the budget.
  """
  return "length" if len(new_ids) >= max_new_tokens else "stop"


def make_generate_fn(model, params, tokenizer, decode_cfg: sampling.DecodeConfig, *, batch_size: int = 32,
                     max_prompt_tokens: int = 512, mesh=None, rules=None, seed: int = 0,
                     with_ids: bool = False, with_finish: bool = False, keep_end: bool = False) -> GenerateFn:
  """Prompts -> generated texts; with_ids and/or with_finish: tuples (text[, new token ids][, finish reason]).

  Prompts are tokenized as training rows begin (`Model.prompt_ids`: T5 inputs end with EOS, decoder prompts
  start with BOS where the tokenizer adds one) and over-long ones are cut as in training, or with `keep_end` lose their beginning instead;
  the new ids stop before end-of-text. The finish reason is `finish_reason(ids, max_new_tokens)`.
  """
  cfg = dataclasses.replace(decode_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)

  def result(ids: list[int]):
    if not (with_ids or with_finish):
      return tokenizer.decode(ids)
    return ((tokenizer.decode(ids),) + ((ids,) if with_ids else ())
            + ((finish_reason(ids, cfg.max_new_tokens),) if with_finish else ()))

  def generate_fn(prompts: Sequence[str]) -> list:
    ids = [model.prompt_ids(tokenizer, p, max_prompt_tokens, keep_end=keep_end) for p in prompts]
    out = []
    for n, chunk in enumerate(_chunks(ids, batch_size)):
      padded = list(chunk) + [chunk[0]] * (batch_size - len(chunk))  # one compiled shape per bucket
      new = sampling.generate(model, params, padded, cfg, rng=jax.random.key(seed + n), mesh=mesh, rules=rules)
      out.extend(result(t) for t in new[:len(chunk)])
    return out

  return generate_fn


def make_loglik_fn(model, params, tokenizer, *, batch_size: int = 32, max_prompt_tokens: int = 512,
                   max_continuation_tokens: int = 64, mesh=None, rules=None, end_id: int | None = None,
                   keep_end: bool = False) -> LoglikFn:
  """(prompt, continuation) pairs -> sum of log-probabilities of the continuation and its end: end-of-text, or
  `end_id` (a decoder's end of turn under a chat format). An over-long prompt loses its end, or with
  `keep_end` its beginning (as `make_generate_fn`)."""
  rules_key = None if rules is None else tuple(sorted(rules.items()))

  def features(prompt: str, continuation: str):
    p = model.cut_prompt(tokenizer.encode(prompt), max_prompt_tokens, keep_end=keep_end)
    c = tokenizer.encode(continuation)[:max_continuation_tokens]
    return model.example_features(p, c, tokenizer=tokenizer, max_prompt_tokens=max_prompt_tokens,
                                  max_continuation_tokens=max_continuation_tokens, end_id=end_id)

  def loglik_fn(prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    if len(prompts) != len(continuations):
      raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    feats = [features(p, c) for p, c in zip(prompts, continuations)]
    if any(f is None for f in feats):
      raise ValueError("an empty continuation cannot be scored")
    out = []
    for chunk in _chunks(feats, batch_size):
      chunk = list(chunk) + [chunk[0]] * (batch_size - len(chunk))
      batch = {k: _pad_stack([f[k] for f in chunk]) for k in chunk[0]}
      out.append(np.asarray(_score(params, batch, model=model, mesh=mesh, rules=rules_key)))
    return np.concatenate(out)[:len(feats)]

  return loglik_fn


@functools.partial(jax.jit, static_argnames=("model", "mesh", "rules"))
def _score(params, batch, *, model, mesh, rules):
  """Sum of log p(continuation + EOS) per row; jitted once per model and shape, not per evaluation."""
  ctx = sharding.activation_sharding(mesh, dict(rules)) if mesh is not None else contextlib.nullcontext()
  with ctx:
    logits = step.forward(model, params, batch)
  _, nll = losses.cross_entropy(logits, batch["decoder_target_tokens"])
  return -jnp.sum(nll * batch["decoder_loss_weights"], axis=-1)


def _pad_stack(rows: list[np.ndarray], multiple: int = 16) -> jnp.ndarray:
  n = max(len(r) for r in rows)
  n = -(-n // multiple) * multiple
  return jnp.asarray(np.stack([np.pad(r, (0, n - len(r))) for r in rows]))


def make_sampling_generate_fn(model, params, tokenizer, *, batch_size: int = 16, max_prompt_tokens: int = 512,
                              mesh=None, rules=None, with_finish: bool = False):
  """`generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed)`, the shape the synthetic-data
  ModelBackend takes (`instruct_jax.lm.model.ModelBackend`); with_finish: (text, finish reason)
  pairs, which the backend reports as each completion's finish_reason."""
  cache: dict[tuple, GenerateFn] = {}

  def generate_fn(prompts: Sequence[str], *, max_new_tokens: int, temperature: float, top_p: float,
                  seed: int) -> list:
    key = (max_new_tokens, temperature, top_p, seed)
    if key not in cache:
      cfg = sampling.DecodeConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
      cache[key] = make_generate_fn(model, params, tokenizer, cfg, batch_size=batch_size,
                                    max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules, seed=seed,
                                    with_finish=with_finish)
    return cache[key](prompts)

  return generate_fn


def instruction_prompts(records: Sequence[Mapping[str, str]], config, *, template_id: int | None = None) -> list[str]:
  """Alpaca-style {instruction[, input][, system]} records as prompts, rendered the way the run whose config
  this is rendered its instruction files (`data.tasks.instruction_task`: the same preprocessing, templates and
  renderer). The template is `template_id`, or the first standard instruction template the run's
  `data.render` settings allowed (template 0, "{prompt}", unless template_ids / num_templates exclude it)."""
  rows = [{"instruction": r["instruction"], "input": r.get("input") or "", "system": r.get("system") or "",
           "output": ""} for r in records]
  task = tasks_lib.Task(name="prompts", source=sources.MemorySource({"prompts": rows}),
                        templates=templates_lib.load("instructions")["instructions"],
                        preprocess=tasks_lib.preprocess_instruction, metric="rouge_l", cluster="instructions")
  if template_id is None:
    allowed = render_lib.select_templates(task, pipeline_lib.PipelineConfig.from_config(config.data).render)
    if not allowed["standard"]:
      raise ValueError("the run's data.render settings allow no standard instruction template; pass a template id")
    template_id = allowed["standard"][0].id
  if not 0 <= template_id < len(task.templates) or task.templates[template_id].kind != "standard":
    raise ValueError(f"instruction template {template_id} is not a standard template (standard ids: "
                     f"{[t.id for t in task.templates if t.kind == 'standard']})")
  cfg = render_lib.RenderConfig(template_ids=(template_id,))
  return [ex["inputs"] for ex in render_lib.render_split(task, "prompts", cfg)]


def chat_spec(config, tokenizer, family: str | None = None) -> str:
  """The chat format a run renders with, as a config.data.chat_format value: the config's, except that a run from a
  checkpoint (config.init_from) with chat data, no chat_format and a tokenizer without a chat template (a base
  model) takes the default format of the checkpoint's family (`families.default_chat_format`; `family`: the
  model config's)."""
  return families.chat_spec(config.data.chat_format, tokenizer, family, from_checkpoint=bool(config.init_from),
                            has_chat_data=tasks_lib.has_chat_data(config.data_paths))


def chat_format(config, tokenizer, family: str | None = None) -> chat_lib.ChatFormat | None:
  """The chat format a run rendered its data with (`chat_spec`, for its tokenizer), or None when it used none (no
  chat data and no chat_format)."""
  return chat_lib.resolve_format(chat_spec(config, tokenizer, family), tokenizer,
                                 has_chat_data=tasks_lib.has_chat_data(config.data_paths))


def chat_prompts(conversations: Sequence[Sequence[Mapping[str, str]]], fmt: chat_lib.ChatFormat) -> list[str]:
  """Conversations ([{role, content}], OpenAI style, ending where the model is to answer) as prompts in `fmt`:
  the rendering with the generation prompt, as training rendered what came before each assistant turn."""
  for i, messages in enumerate(conversations):
    chat_lib.check_prompt_messages(messages, f"conversation {i}")
  return [chat_lib.prompt(fmt, messages) for messages in conversations]


def chat_stop_id(model, tokenizer, fmt: chat_lib.ChatFormat | None) -> int:
  """The token besides end-of-text that ends a generated turn: a decoder's end-of-turn marker in `fmt` (-1: none;
  T5 targets end with end-of-text)."""
  if fmt is None or not model.reply_follows_prompt:
    return -1
  stop = chat_lib.end_of_turn_id(fmt, tokenizer)
  return -1 if stop == tokenizer.eos_id else stop


def make_chat_generate_fn(model, params, tokenizer, fmt: chat_lib.ChatFormat, decode_cfg: sampling.DecodeConfig,
                          **kwargs) -> Callable[[Sequence[Sequence[Mapping[str, str]]]], list]:
  """Conversations -> replies: each rendered in `fmt` with the generation prompt (`chat_prompts`), read with its
  special strings as their ids, and decoded until end-of-text or the format's end of turn. `kwargs` go to
  `make_generate_fn` (batch_size, max_prompt_tokens, mesh, rules, seed, with_ids, with_finish).

      fmt = loaded.chat   # the run's format (plan.Loaded)
      reply = predict.make_chat_generate_fn(loaded.model, loaded.params, loaded.tokenizer, fmt, cfg)(
          [[{"role": "user", "content": "Name a prime."}]])[0]
  """
  cfg = dataclasses.replace(decode_cfg, stop_id=chat_stop_id(model, tokenizer, fmt))
  kwargs.setdefault("keep_end", model.reply_follows_prompt)  # an over-long prompt keeps its generation prompt
  generate = make_generate_fn(model, params, chat_lib.SpecialAware(tokenizer, fmt), cfg, **kwargs)
  return lambda conversations: generate(chat_prompts(conversations, fmt))


def predict_fns(model, params, tokenizer, eval_cfg, *, max_prompt_tokens: int, mesh=None,
                rules=None, chat_format: chat_lib.ChatFormat | None = None) -> PredictFns:
  """The functions evaluators are run with (config section `eval_cfg`: decoding, batch size, rank
  classification), for these parameters. With the run's `chat_format`, prompts are read as chat renderings
  (special strings as their ids); a decoder then also stops at the format's end of turn, rank classification
  scores each option followed by that end of turn (as training scored replies), and an over-long prompt
  loses its beginning rather than the generation prompt at its end."""
  stop = chat_stop_id(model, tokenizer, chat_format)
  keep_end = chat_format is not None and model.reply_follows_prompt
  if chat_format is not None:
    tokenizer = chat_lib.SpecialAware(tokenizer, chat_format)
  decode_cfg = sampling.DecodeConfig(max_new_tokens=eval_cfg.max_new_tokens, num_beams=eval_cfg.num_beams,
                                     stop_id=stop)
  gen = make_generate_fn(model, params, tokenizer, decode_cfg, batch_size=eval_cfg.batch_size,
                         max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules, keep_end=keep_end)
  loglik = None
  if eval_cfg.rank_classification:
    loglik = make_loglik_fn(model, params, tokenizer, batch_size=eval_cfg.batch_size,
                            max_prompt_tokens=max_prompt_tokens, mesh=mesh, rules=rules,
                            end_id=stop if stop >= 0 else None, keep_end=keep_end)
  return PredictFns(gen, loglik)
