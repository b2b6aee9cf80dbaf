"""Every synthetic-data filter on crafted cases."""
import pytest

from instruct_jax.synthetic import filters
from instruct_jax.synthetic.evol_instruct import eliminate
from instruct_jax.synthetic.parsers import Instance


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("Name three birds.", "too_short"),             # 3 words
    ("Name three small birds.", None),              # 4 words: kept
    (" ".join(["word"] * 150), None),
    (" ".join(["word"] * 151), "too_long"),
    ("Draw a cat sitting on a mat.", "blacklisted_word"),
    ("Describe the picture in the attached file.", "blacklisted_word"),
    ("Tell me how to go to the station.", "blacklisted_word"),
    ("Describe the mapping from keys to values.", None),   # "map" only as a whole word
    ("Summarize the profile of the applicant.", None),     # "file" inside a word
    ("Write a program that adds two numbers.", "write_a_program"),
    ("write a program to print primes.", "write_a_program"),
    ("Write a poem about programs and code.", None),
    ("- List three colours of the rainbow.", "starts_with_punctuation"),
    ('"Explain the rules of chess briefly."', "starts_with_punctuation"),
    ("Écris une phrase sur la mer aujourd'hui.", "starts_with_non_ascii"),
    ("Explain how vaccines train the immune system.", None),
])
def test_instruction_filter(text, reason):
  assert filters.instruction_filter(text) == reason


def test_instruction_filter_alpaca_blacklist():
  text = "Describe the music of the baroque period."
  assert filters.instruction_filter(text) is None
  assert filters.instruction_filter(
      text, extra_blacklist=filters.ALPACA_EXTRA_BLACKLIST) == "blacklisted_word"


@pytest.mark.parametrize("inst,reason", [
    (Instance("2 + 2", "4"), None),
    (Instance("", "A haiku about rain."), None),
    (Instance("x", ""), "empty_output"),
    (Instance("x", "   "), "empty_output"),
    (Instance("same", " same "), "input_equals_output"),
    (Instance("List the steps:", "1. Mix"), "ends_with_colon"),
    (Instance("abc", "The answer is:"), "ends_with_colon"),
])
def test_instance_filter(inst, reason):
  assert filters.instance_filter(inst) == reason


def test_select_instances_filters_dedups_and_caps():
  insts = [Instance(f"in {i}", f"out {i}") for i in range(7)]
  insts.insert(2, Instance("in 0", "out 0"))           # exact repeat
  insts.insert(3, Instance("bad", ""))                 # empty output
  kept, dropped, task_reason = filters.select_instances(insts, max_instances=5)
  assert task_reason is None
  assert [k.input for k in kept] == [f"in {i}" for i in range(5)]
  assert dropped == {"duplicate_instance": 1, "empty_output": 1, "over_instance_limit": 2}


def test_select_instances_conflict_drops_task():
  insts = [Instance("a", "1"), Instance("b", "2"), Instance("a", "3")]
  kept, _, task_reason = filters.select_instances(insts)
  assert kept == [] and task_reason == "conflicting_outputs"


def test_select_instances_nothing_valid():
  kept, dropped, task_reason = filters.select_instances([Instance("a", "a"), Instance("b", "")])
  assert kept == [] and task_reason == "no_valid_instance"
  assert dropped == {"input_equals_output": 1, "empty_output": 1}


def test_evol_eliminator_rules():
  long_sorry = "Sorry for the wait. " + "Here is a full explanation of the topic. " * 12
  assert filters.is_sorry_and_short("Sorry, I can't do that.")
  assert not filters.is_sorry_and_short(long_sorry)          # 80+ words
  assert not filters.is_sorry_and_short("A plain answer without apology.")
  assert filters.is_only_stop_words("It is what it is!")
  assert filters.is_only_stop_words("...")
  assert not filters.is_only_stop_words("Paris is the capital.")
  markers = ["ORIGINAL TASK", "REWRITTEN TASK"]
  assert filters.copies_markers("Rewritten task: explain tides.", markers)
  assert not filters.copies_markers("Explain tides using two examples.", markers)
  ok = "The tide rises twice a day because of the moon's pull on the oceans."
  assert eliminate("Explain tides.", "Explain tides to a sailor.", ok, False, False) is None
  assert eliminate("Explain tides.", "Explain tides to a sailor.", ok, False, True) == (
      "no_information_gain")
  assert eliminate("Explain tides.", "Explain tides to a sailor.", ok, False, None) == (
      "judge_unparsable")
  assert eliminate("Explain tides.", " Explain  tides. ", ok, False, False) == "no_information_gain"
  assert eliminate("a b c", "a b c d", "Sorry, no.", False, False) == "sorry_short_response"
  assert eliminate("a b c", "a b c d", "It is so.", False, False) == "trivial_response"
  assert eliminate("a b c", "a b c d", ok, True, False) == "response_cut_by_token_limit"


def test_curation_filters():
  text = ("See [the docs](https://example.com/a_(b)) or https://x.org/page?q=1, "
          "and www.example.com/path.")
  stripped = filters.strip_links(text)
  assert "http" not in stripped and "www." not in stripped
  assert stripped.startswith("See the docs")
  assert filters.is_first_person("I think it works.")
  assert filters.is_first_person("In my experience, yes.")
  assert filters.is_first_person("My advice: wait.")
  assert not filters.is_first_person("for i in range(3): print(i)")
  assert not filters.is_first_person("The answer is forty-two.")
  assert filters.refers_to_other_content("As the other answer says, yes.", ["other answer"])
  assert filters.refers_to_other_content("EDIT: fixed typo", ["edit:"])
  assert not filters.refers_to_other_content("Edit the file with vim.", ["edit:"])
  assert filters.has_unbalanced_code_fence("```python\nx = 1\n")
  assert not filters.has_unbalanced_code_fence("```\nx\n```")
  assert filters.is_repetitive("buy now\n" * 5)
  assert not filters.is_repetitive("one line\nanother line\n- a\n- a\n- a\n- a")  # short lines
