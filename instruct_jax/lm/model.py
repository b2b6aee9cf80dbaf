"""`ModelBackend`: a model of this project (a trained workdir, or a checkpoint before fine-tuning) as a
language-model backend (`lm/backends.py`), decoded with the KV cache in batches.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from instruct_jax import plan as plan_lib
from instruct_jax import predict
from instruct_jax.lm.backends import BackendError, Completion, Conversation, GenParams, apply_stop
from instruct_jax.lm.backends import check_conversation, format_chat

GenerateFn = Callable[..., list]


class ModelBackend:
  """Wraps an instruct_jax decoding function as a backend.

  `generate_fn(prompts, *, max_new_tokens, temperature, top_p, seed)` returns only the continuations:
  strings, or (text, finish reason) pairs (`predict.make_sampling_generate_fn(..., with_finish=True)`:
  "length" when a row hit max_new_tokens without end-of-text, else "stop"). Stop strings are applied
  here (finish_reason "stop" when one was cut); with plain strings the finish reason is otherwise
  unknown (None). presence_penalty is not applied. Chat is rendered to text by `chat_format` (default
  `format_chat`). Requests go in batches of `batch_size`.
  """
  kind = "model"

  def __init__(self, generate_fn: GenerateFn, *, model: str = "instruct_jax",
               chat_format: Callable[[Conversation], str] = format_chat, batch_size: int = 32):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.generate_fn = generate_fn
    self.model = model
    self.chat_format = chat_format
    self.batch_size = batch_size

  @classmethod
  def from_workdir(cls, path: str | None, *, step: int | None = None, batch_size: int = 16,
                   init_from: str | None = None) -> "ModelBackend":
    """A trained workdir (its newest checkpoint, or `step`) served by the KV-cache decoder in batches; with
    `init_from`, that checkpoint before fine-tuning (a baseline, step 0) with the workdir's settings or the defaults.

    The model name is "PATH@STEP", so the request cache tells checkpoints apart. Completion prompts go
    to the model as they are; a chat [system,] user is rendered as the run rendered its instruction
    files (`predict.instruction_prompts`: system, blank line, instruction), longer conversations with
    `format_chat` first. Prompts longer than the run's `data.inputs_length` are cut as in training.
    """
    loaded = plan_lib.load(path, init_from, step)
    generate_fn = predict.make_sampling_generate_fn(
        loaded.model, loaded.params, loaded.tokenizer, batch_size=batch_size,
        max_prompt_tokens=loaded.config.data.inputs_length, mesh=loaded.mesh, rules=loaded.rules,
        with_finish=True)

    def chat_format(conversation: Conversation) -> str:
      has_system = conversation[0]["role"] == "system"
      turns = conversation[1:] if has_system else conversation
      instruction = turns[-1]["content"] if len(turns) == 1 else format_chat(turns)
      system = conversation[0]["content"] if has_system else ""
      return predict.instruction_prompts([{"instruction": instruction, "system": system}],
                                         loaded.config)[0]

    return cls(generate_fn, model=f"{os.path.abspath(init_from or path)}@{loaded.step}", chat_format=chat_format,
               batch_size=batch_size)

  def complete(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
    out: list[Completion] = []
    for start in range(0, len(prompts), self.batch_size):
      batch = list(prompts[start:start + self.batch_size])
      results = self.generate_fn(batch, max_new_tokens=params.max_new_tokens,
                                 temperature=params.temperature, top_p=params.top_p, seed=params.seed)
      if len(results) != len(batch):
        raise BackendError(f"generate_fn returned {len(results)} texts for {len(batch)} prompts")
      for result in results:
        text, finish = result if isinstance(result, tuple) else (result, None)
        if not isinstance(text, str):
          raise BackendError(f"generate_fn must return strings, got {type(text).__name__}")
        cut, stopped = apply_stop(text, params.stop)
        out.append(Completion(cut, "stop" if stopped else finish))
    return out

  def chat(self, conversations: Sequence[Conversation], params: GenParams) -> list[Completion]:
    return self.complete([self.chat_format(check_conversation(c)) for c in conversations], params)
