"""Parsers that turn language-model text into structured answers for the synthetic methods.

Every parser is total: malformed text gives None or an empty result (which callers count as a
filter reason), never an exception.
"""
from __future__ import annotations

import dataclasses
import re

_WS = re.compile(r"\s+")
_NUMBERED = re.compile(r"^[ \t]*(\d{1,3})[ \t]*[.)][ \t]*", re.M)
_EXAMPLE = re.compile(r"^[ \t]*Example[ \t]*\d+[ \t]*:?[ \t]*$", re.M | re.I)
_INPUT = re.compile(r"^[ \t]*Input[ \t]*:[ \t]?", re.M | re.I)
_OUTPUT = re.compile(r"^[ \t]*Output[ \t]*:[ \t]?", re.M | re.I)
_LABEL = re.compile(r"^[ \t]*Class[ \t]+label[ \t]*:[ \t]*(.*)$", re.M | re.I)
_SCORE = re.compile(r"score[ \t]*[:=][ \t]*\**[ \t]*(\d+(?:\.\d+)?)[ \t]*\**(?:[ \t]*(?:/|out of)"
                    r"[ \t]*5)?", re.I)
_NO_INPUT = frozenset({"", "none", "n/a", "na", "no input", "<noinput>", "null", "-"})


def squash(text: str) -> str:
  """Collapses runs of whitespace to one space and strips the ends."""
  return _WS.sub(" ", text).strip()


def parse_numbered_list(text: str, first_number: int) -> list[str]:
  """Items of a numbered list whose first marker ("9.") ended the prompt.

  >>> parse_numbered_list(" Name a fruit.\\n10. Count to three.\\n11.", 9)
  ['Name a fruit.', 'Count to three.']
  """
  full = f"{first_number}. {text}"
  marks = list(_NUMBERED.finditer(full))
  items = []
  for i, m in enumerate(marks):
    end = marks[i + 1].start() if i + 1 < len(marks) else len(full)
    item = squash(full[m.end():end])
    if item:
      items.append(item)
  return items


def parse_yes_no(text: str) -> bool | None:
  """True for an answer starting with "yes", False for "no", None otherwise."""
  words = re.findall(r"[a-z]+", text.lower())
  if not words:
    return None
  return {"yes": True, "no": False}.get(words[0])


def parse_equal(text: str) -> bool | None:
  """The judge's verdict: True for "Equal", False for "Not Equal", None when neither is clear."""
  t = squash(text).lower()
  if re.match(r"\W*not[ \t-]*(equal|the same)\b", t):
    return False
  if re.match(r"\W*(equal|the same)\b", t):
    return True
  if re.search(r"\bnot[ \t-]*(equal|the same)\b", t):
    return False
  if re.search(r"\b(equal|the same)\b", t):
    return True
  return None


def parse_score(text: str, low: int = 1, high: int = 5) -> int | None:
  """The last "Score: N" in `text` (N an integer in [low, high]; "4/5" and "**4**" are read),
  or None."""
  matches = _SCORE.findall(text)
  if not matches:
    return None
  value = float(matches[-1])
  if value != int(value) or not low <= value <= high:
    return None
  return int(value)


def clean_text(text: str) -> str:
  """Strips whitespace and one pair of wrapping quotes from a one-piece answer."""
  t = text.strip()
  if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
    t = t[1:-1].strip()
  return t


@dataclasses.dataclass(frozen=True)
class Instance:
  input: str
  output: str


def _no_input(text: str) -> str:
  return "" if text.strip().lower().strip(".") in _NO_INPUT else text.strip()


def parse_input_first(text: str) -> tuple[list[Instance], int]:
  """Instances written as "Example N / Input: ... / Output: ..." blocks.

  A missing "Input:" means no input; "Input: none" (and similar) also means no input. Returns the
  instances and the number of blocks that had no "Output:" (unparsable).
  """
  marks = list(_EXAMPLE.finditer(text))
  blocks = [text[m.end():marks[i + 1].start() if i + 1 < len(marks) else len(text)]
            for i, m in enumerate(marks)] or [text]
  out, bad = [], 0
  for block in blocks:
    if not block.strip():
      continue
    out_m = _OUTPUT.search(block)
    if out_m is None:
      bad += 1
      continue
    in_m = _INPUT.search(block, 0, out_m.start())
    inp = block[in_m.end():out_m.start()] if in_m else ""
    out.append(Instance(_no_input(inp), block[out_m.end():].strip()))
  return out, bad


def parse_output_first(text: str) -> tuple[list[Instance], int]:
  """Instances written as "Class label: L / Input: ..." blocks; the label becomes the output.

  Returns the instances and the number of label blocks that had no "Input:" (unparsable).
  """
  marks = list(_LABEL.finditer(text))
  out, bad = [], 0
  for i, m in enumerate(marks):
    end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
    block = text[m.end():end]
    in_m = _INPUT.search(block)
    if in_m is None:
      bad += 1
      continue
    out.append(Instance(_no_input(block[in_m.end():]), m.group(1).strip()))
  return out, bad
