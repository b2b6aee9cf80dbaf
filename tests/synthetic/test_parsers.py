"""Every synthetic-data parser, the prompt files and their templates, on crafted cases."""
import glob
import os

import pytest

from instruct_jax.synthetic import parsers, prompts
from instruct_jax.synthetic import self_instruct, evol_instruct, orca, backtranslation


def test_numbered_list():
  text = (" Name a fruit that is\n   yellow when ripe.\n10. Count to three.\n"
          "11) Compute 3 + 10. Then halve it.\n12.\n  13 .  Last one  ")
  assert parsers.parse_numbered_list(text, 9) == [
      "Name a fruit that is yellow when ripe.", "Count to three.",
      "Compute 3 + 10. Then halve it.", "Last one"]
  assert parsers.parse_numbered_list("", 9) == []
  assert parsers.parse_numbered_list("\n10. Only the second.", 9) == ["Only the second."]


@pytest.mark.parametrize("text,expected", [
    (" Yes", True), ("yes.", True), ("NO", False), (" No, it is open-ended.", False),
    ("Perhaps", None), ("", None), ("  ...  ", None), ("Yesterday", None),
])
def test_yes_no(text, expected):
  assert parsers.parse_yes_no(text) is expected


@pytest.mark.parametrize("text,expected", [
    ("Equal", True), (" equal.", True), ("Not Equal", False), ("not equal", False),
    ("NOT-EQUAL", False), ("They are not the same.", False), ("The same.", True),
    ("Reply: Equal", True), ("I think they are not equal.", False), ("It depends.", None), ("", None),
])
def test_equal(text, expected):
  assert parsers.parse_equal(text) is expected


@pytest.mark.parametrize("text,expected", [
    ("Good answer.\nScore: 5", 5), ("Score: 4/5", 4), ("**Score:** 3", 3), ("score = 2.0", 2),
    ("Score: 4 out of 5", 4), ("Score: 2\nOn reflection...\nScore: 4", 4),
    ("Score: 4.5", None), ("Score: 0", None), ("Score: 6", None), ("I give it a five.", None),
    ("", None), ("Score:", None),
])
def test_score(text, expected):
  assert parsers.parse_score(text) == expected


def test_clean_text():
  assert parsers.clean_text('  "Explain tides."  ') == "Explain tides."
  assert parsers.clean_text("'a' and 'b'") == "a' and 'b"  # one wrapping pair only
  assert parsers.clean_text("plain\n") == "plain"


def test_input_first_instances():
  text = ("Example 1\nInput: none\nOutput: 1. a\n2. b\n\n"
          "Example 2:\nInput: 451 F\nOutput: 232.8 C\n"
          "Example 3\nOutput: no input here\n"
          "Example 4\nInput: only an input\n")
  got, bad = parsers.parse_input_first(text)
  assert got == [parsers.Instance("", "1. a\n2. b"), parsers.Instance("451 F", "232.8 C"),
                 parsers.Instance("", "no input here")]
  assert bad == 1
  # Without "Example" markers the whole text is one example.
  assert parsers.parse_input_first("Input: x\nOutput: y") == ([parsers.Instance("x", "y")], 0)
  assert parsers.parse_input_first("nothing useful") == ([], 1)


def test_output_first_instances():
  text = ("Class label: Positive\nInput: Great phone.\n\n"
          "class label:Negative\nInput: Broke in a day.\nIt also overheated.\n"
          "Class label: Neutral\n")
  got, bad = parsers.parse_output_first(text)
  assert got == [parsers.Instance("Great phone.", "Positive"),
                 parsers.Instance("Broke in a day.\nIt also overheated.", "Negative")]
  assert bad == 1
  assert parsers.parse_output_first("no labels") == ([], 0)


def test_every_prompt_file_loads_with_a_version():
  files = sorted(glob.glob(os.path.join(prompts.PROMPT_DIR, "*.yaml")))
  assert len(files) == 5
  versions = {prompts.load(f)["version"] for f in files}
  assert len(versions) == 5


def test_fill_checks_slots(tmp_path):
  assert prompts.fill("a {{x}} b {{y}} {x}", x="1", y="{2}") == "a 1 b {2} {x}"
  with pytest.raises(ValueError, match="missing"):
    prompts.fill("{{x}} {{y}}", x="1")
  with pytest.raises(ValueError, match="unused"):
    prompts.fill("{{x}}", x="1", z="2")
  bad = tmp_path / "bad.yaml"
  bad.write_text("generation: {}\n")
  with pytest.raises(ValueError, match="version"):
    prompts.load(str(bad))


def test_self_instruct_prompts_round_trip_through_parsers():
  p = prompts.load("self_instruct")
  prompt = self_instruct.generation_prompt(p, ["Task one here.", "Task two here."])
  assert prompt.endswith("1. Task one here.\n2. Task two here.\n3.")
  cls = self_instruct.classification_prompt(p, "Is the sky green?")
  assert cls.endswith("Task: Is the sky green?\nClassification:")
  assert cls.count("Classification: Yes") + cls.count("Classification: No") == 31
  # The demos in the instance prompts must parse back to what the YAML holds.
  for key, make, parse in [("instances_input_first", self_instruct.input_first_prompt,
                            parsers.parse_input_first),
                           ("instances_output_first", self_instruct.output_first_prompt,
                            parsers.parse_output_first)]:
    text = make(p, "X")
    for demo in p[key]["demos"]:
      body = text.split(f"Task: {demo['task']}\n", 1)[1].split("\n\nTask:", 1)[0]
      got, bad = parse(body)
      assert bad == 0
      want = [(ex.get("input", ""), ex.get("output", ex.get("label"))) for ex in demo["examples"]]
      assert [(g.input, g.output) for g in got] == want


def test_other_prompts_fill():
  ev = prompts.load("evol_instruct")
  for op in evol_instruct.IN_DEPTH + (evol_instruct.IN_BREADTH,):
    text = evol_instruct.evolve_prompt(ev, op, "Explain tides.")
    assert "Explain tides." in text and "{{" not in text
  with pytest.raises(ValueError, match="operator"):
    evol_instruct.evolve_prompt(ev, "shuffle", "x")
  o = prompts.load("orca")
  assert sorted(int(k) for k in o["system_messages"]) == list(range(1, 17))
  assert o["system_messages"][1] == ""
  q = orca.Query("q", "flan2021", "t", "Pick one.", "", False)
  assert orca.allowed_messages(o, q) == [3, 4, 7]
  assert orca.allowed_messages(o, orca.Query("q", "flan2021", "t", "x", "", True)) == [3, 4, 7, 8,
                                                                                        10]
  bt = prompts.load("backtranslation")
  r = backtranslation.rating_prompt(bt, [("I1", "O1")], "Do X.", "Done.")
  assert "I1" in r and r.rstrip().endswith('where N is 1 to 5.')
  b = backtranslation.backward_prompt(bt, [("I1", "O1")], "Some text.")
  assert b.endswith("Reply:\nSome text.\n\nRequest:\n")
