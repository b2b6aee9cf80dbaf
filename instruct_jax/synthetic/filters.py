"""Filters for synthetic instructions and responses. Each returns a reason string (or None to keep).

Reasons are stable identifiers: they key the kept/filtered report of every command.
"""
from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

from instruct_jax.synthetic.parsers import Instance

# Things a text-only model cannot do or see (Self-Instruct's list).
SELF_INSTRUCT_BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file",
                           "files", "map", "maps", "draw", "plot", "go to")
# Words Alpaca added to it; pass `extra_blacklist=ALPACA_EXTRA_BLACKLIST` to use them.
ALPACA_EXTRA_BLACKLIST = ("video", "audio", "music", "flowchart", "diagram")

# A plain list of English function words, for "is this response only stop words?".
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves ok okay yes well oh um uh sure hmm
""".split())


def instruction_filter(instruction: str, *, min_words: int = 4, max_words: int = 150,
                       extra_blacklist: Sequence[str] = ()) -> str | None:
  """Self-Instruct's heuristics: 3 < words <= 150, no blacklisted word, not "Write a program",
  first character neither punctuation nor non-ASCII."""
  text = instruction.strip()
  if not text:
    return "empty"
  words = len(text.split())
  if words < min_words:
    return "too_short"
  if words > max_words:
    return "too_long"
  lowered = text.lower()
  for word in (*SELF_INSTRUCT_BLACKLIST, *extra_blacklist):
    if re.search(r"\b" + re.escape(word) + r"\b", lowered):
      return "blacklisted_word"
  if lowered.startswith("write a program"):
    return "write_a_program"
  if text[0] in string.punctuation:
    return "starts_with_punctuation"
  if not text[0].isascii():
    return "starts_with_non_ascii"
  return None


def instance_filter(inst: Instance) -> str | None:
  """Self-Instruct's per-instance checks: non-empty output, input != output, no text ending ":"."""
  inp, out = inst.input.strip(), inst.output.strip()
  if not out:
    return "empty_output"
  if inp == out:
    return "input_equals_output"
  if inp.endswith(":") or out.endswith(":"):
    return "ends_with_colon"
  return None


def select_instances(instances: Iterable[Instance], max_instances: int = 5,
                     ) -> tuple[list[Instance], collections.Counter, str | None]:
  """Applies the instance filters, drops repeats, keeps at most `max_instances`.

  Returns (kept, counts of dropped instances by reason, task-level reason or None). The task-level
  reason is "conflicting_outputs" when one input is given two different outputs (the whole task is
  then dropped and `kept` is empty) and "no_valid_instance" when nothing survives.
  """
  dropped: collections.Counter = collections.Counter()
  seen: dict[str, str] = {}
  unique: list[Instance] = []
  for inst in instances:
    reason = instance_filter(inst)
    if reason:
      dropped[reason] += 1
      continue
    inst = Instance(inst.input.strip(), inst.output.strip())
    if inst.input in seen:
      if seen[inst.input] != inst.output:
        return [], dropped, "conflicting_outputs"
      dropped["duplicate_instance"] += 1
      continue
    seen[inst.input] = inst.output
    unique.append(inst)
  if len(unique) > max_instances:
    dropped["over_instance_limit"] += len(unique) - max_instances
  kept = unique[:max_instances]
  return kept, dropped, None if kept else "no_valid_instance"


# --- Evol-Instruct eliminator (rules 2-4; rule 1 is an LM judgement) ---

def is_sorry_and_short(response: str, max_words: int = 80) -> bool:
  """Rule 2: the response says "sorry" and is shorter than `max_words` words."""
  return "sorry" in response.lower() and len(response.split()) < max_words


def is_only_stop_words(response: str) -> bool:
  """Rule 3: the response holds nothing but punctuation and stop words (or nothing at all)."""
  words = re.findall(r"[a-z0-9']+", response.lower())
  return all(w.strip("'") in STOP_WORDS for w in words)


def copies_markers(instruction: str, markers: Sequence[str]) -> bool:
  """Rule 4: the evolved instruction repeats the rewriting prompt's own marker words."""
  lowered = instruction.lower()
  return any(m.lower() in lowered for m in markers)


# --- LIMA-style curation ---

_URL = re.compile(r"(?:https?://|www\.)[^\s<>()\[\]]+[^\s<>()\[\].,;:!?'\"]", re.I)
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\((?:[^()\s]|\([^()\s]*\))+\)")  # one level of (...)
_PRONOUN_I = re.compile(r"\bI(?:'(?:m|ve|d|ll))?\b")  # case-sensitive: "i" is often a variable
_PRONOUN_ME = re.compile(r"\b(?:me|my|mine|myself)\b", re.I)


def strip_links(text: str) -> str:
  """Keeps the words of markdown links and removes bare URLs (LIMA strips links)."""
  text = _MD_LINK.sub(r"\1", text)
  text = _URL.sub("", text)
  return re.sub(r"[ \t]{2,}", " ", text).strip()


def is_first_person(text: str) -> bool:
  """The author speaks of themselves: "I", "I'm", "me", "my", "mine", "myself"."""
  return bool(_PRONOUN_I.search(text) or _PRONOUN_ME.search(text))


def refers_to_other_content(text: str, phrases: Sequence[str]) -> bool:
  """Mentions other answers or its own edits (not a standalone reply)."""
  lowered = text.lower()
  return any(p.lower() in lowered for p in phrases)


def has_unbalanced_code_fence(text: str) -> bool:
  return text.count("```") % 2 == 1


def is_repetitive(text: str, max_repeats: int = 3) -> bool:
  """Some non-trivial line occurs more than `max_repeats` times."""
  lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) > 3]
  return any(c > max_repeats for c in collections.Counter(lines).values())
