"""Preference pairs: a prompt with a chosen and a rejected response, for DPO and its relatives (objectives.py).

A JSONL (or JSON list) file holds one pair per record, in the formats people have:

    {"prompt": "Name a prime.", "chosen": "7", "rejected": "8"}                          explicit, strings
    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}]}                              conversational (TRL)
    {"prompt": "...", "chosen": [user, assistant], "rejected": [user, assistant]}       UltraFeedback-binarized:
                                                                                         the prompt repeated
    {"chosen": [..., assistant], "rejected": [..., assistant]}                           implicit prompt: the
                                                                                         messages both share

with an optional "system" string. A pair is rendered with the run's chat format (the prompt once, with the
generation prompt; each response as the assistant turn that follows, its end-of-turn token scored) or, without
one, as instruction files are (`tasks.preprocess_instruction`: [system, blank line,] prompt; the response as the
target, end-of-text scored). Only the responses are scored. A bad record is an error naming file:line and the field
(strict), or skipped and counted.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from instruct_jax.data import chat as chat_lib
from instruct_jax.data import sources


class PreferenceError(sources.DataError):
  """A preference record that cannot be read; the message names file:line and the field."""


def _messages(value: Any, where: str, field: str) -> list[dict[str, str]]:
  if isinstance(value, str):
    return [{"role": "user", "content": value}] if field == "prompt" else [{"role": "assistant", "content": value}]
  if not isinstance(value, list) or not value:
    raise PreferenceError(f"{where}: field {field!r} must be a string or a non-empty list of messages, got "
                          f"{type(value).__name__}")
  out = []
  for i, m in enumerate(value):
    if not (isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
      raise PreferenceError(f"{where}: {field}[{i}] must be a message {{\"role\": ..., \"content\": ...}} of strings")
    if m["role"] not in chat_lib.ROLES:
      raise PreferenceError(f"{where}: {field}[{i}].role {m['role']!r} is not one of {chat_lib.ROLES}")
    out.append({"role": m["role"], "content": m["content"]})
  return out


def parse_preference(record: Any, where: str) -> dict[str, Any]:
  """A record (see the module docstring) as {"prompt": messages ending with a user turn, "chosen": str,
  "rejected": str, "where": `where`}; PreferenceError naming `where` (file:line) and the field otherwise."""
  if not isinstance(record, Mapping):
    raise PreferenceError(f"{where}: a preference record is a JSON object, got {type(record).__name__}")
  for field in ("chosen", "rejected"):
    if field not in record:
      raise PreferenceError(f"{where}: missing field {field!r} (a pair has 'chosen' and 'rejected', and a 'prompt' "
                            "unless both responses are whole conversations)")
  chosen, rejected = _messages(record["chosen"], where, "chosen"), _messages(record["rejected"], where, "rejected")
  if "prompt" in record:
    prompt = _messages(record["prompt"], where, "prompt")
    for field, conv in (("chosen", chosen), ("rejected", rejected)):  # UltraFeedback repeats the prompt
      if len(conv) > 1 and conv[:len(prompt)] == prompt:
        conv[:] = conv[len(prompt):]
      if len(conv) != 1:
        raise PreferenceError(f"{where}: field {field!r} must be one assistant response (or the prompt followed by "
                              f"one), got {len(conv)} messages")
  else:
    if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
      raise PreferenceError(f"{where}: without a 'prompt', 'chosen' and 'rejected' must be conversations that share "
                            "every message but their last")
    prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
  for field, conv in (("chosen", chosen), ("rejected", rejected)):
    if conv[0]["role"] != "assistant":
      raise PreferenceError(f"{where}: field {field!r}: the response must be an assistant message, got role "
                            f"{conv[0]['role']!r}")
    if not conv[0]["content"].strip():
      raise PreferenceError(f"{where}: field {field!r} is empty")
  system = record.get("system")
  if system is not None and not isinstance(system, str):
    raise PreferenceError(f"{where}: field 'system' must be a string, got {type(system).__name__}")
  if system and system.strip():
    if prompt[0]["role"] == "system":
      raise PreferenceError(f"{where}: a 'system' field and a system message in 'prompt'; give one")
    prompt = [{"role": "system", "content": system.strip()}, *prompt]
  if prompt[-1]["role"] != "user":
    raise PreferenceError(f"{where}: field 'prompt' must end with a user message, got role {prompt[-1]['role']!r}")
  return {"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"], "where": where}


class PreferenceSource(sources._FileSource):  # pylint: disable=protected-access
  """Preference pairs from JSONL (or JSON list) files, one file per split (`parse_preference`'s records)."""
  kind = "preference"

  def __init__(self, files: Mapping[str, str | os.PathLike], *, strict: bool = True):
    super().__init__(files)
    self.strict = strict
    self.stats = sources.ReadStats()

  def _read(self, path: str) -> list[dict[str, Any]]:
    return sources.parse_records(path, parse_preference, strict=self.strict, stats=self.stats, error=PreferenceError,
                                 what="preference pair")


def _plain_prompt(messages: list[dict[str, str]], where: str) -> str:
  """[system,] user as an instruction file's prompt ([system, blank line,] user); longer ones need a chat format."""
  system = messages[0]["content"] if messages[0]["role"] == "system" else ""
  turns = messages[1:] if system else messages
  if len(turns) != 1:
    raise PreferenceError(f"{where}: a prompt of several turns needs a chat format ({chat_lib.FLAG})")
  return (system.strip() + "\n\n" if system.strip() else "") + turns[0]["content"].strip()


class PreferenceFields:
  """A task's preprocessor: a parsed pair as template fields. "prompt", "answer" (the chosen response) and
  "rejected"; with a chat format also "chat" and "rejected_chat", each response rendered after the prompt with only
  its own turn scored."""

  def __init__(self, fmt: chat_lib.ChatFormat | None):
    self.fmt = fmt

  def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
    if self.fmt is None:
      return {"prompt": _plain_prompt(record["prompt"], record["where"]), "answer": record["chosen"],
              "rejected": record["rejected"]}
    out = {"answer": record["chosen"], "rejected": record["rejected"]}
    for key, response in (("chat", record["chosen"]), ("rejected_chat", record["rejected"])):
      rendered = chat_lib.render(self.fmt, [*record["prompt"], {"role": "assistant", "content": response}])
      out[key] = {**rendered, "spans": rendered["spans"][-1:]}  # the prompt's own assistant turns are not scored
    out["prompt"] = out["chat"]["inputs"]
    return out
