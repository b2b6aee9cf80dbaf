"""The built-in generated tasks: answers, shared inputs, determinism, clusters, balance."""
import collections

from instruct_jax.data import builtin


def _items(ex):
  return ex["items"].split()


def _key(x):
  return (int(x), x) if x.isdigit() else (0, x)


# Each answer recomputed here from the items and the instruction's parameters, independently of builtin.py.
_EXPECT = {
    "sort_ascending": lambda xs, e: sorted(xs, key=_key),
    "sort_descending": lambda xs, e: sorted(xs, key=_key)[::-1],
    "reverse": lambda xs, e: xs[::-1],
    "first_k": lambda xs, e: xs[:e["k"]],
    "last_k": lambda xs, e: xs[len(xs) - e["k"]:],
    "item_at": lambda xs, e: [xs[e["k"] - 1]],
    "count_items": lambda xs, e: [str(len(xs))],
    "count_occurrences": lambda xs, e: [str(xs.count(e["item"]))],
    "count_even": lambda xs, e: [str(sum(int(x) % 2 == 0 for x in xs))],
    "filter_even": lambda xs, e: [x for x in xs if int(x) % 2 == 0],
    "filter_greater": lambda xs, e: [x for x in xs if int(x) > e["threshold"]],
    "remove_item": lambda xs, e: [x for x in xs if x != e["item"]],
    "uppercase": lambda xs, e: [x.upper() for x in xs],
    "increment": lambda xs, e: [str(int(x) + 1) for x in xs],
    "repeat_each": lambda xs, e: [x for x in xs for _ in range(2)],
    "contains": lambda xs, e: ["yes" if e["item"] in xs else "no"],
    "is_sorted": lambda xs, e: ["yes" if all(_key(a) <= _key(b) for a, b in zip(xs, xs[1:])) else "no"],
    "all_even": lambda xs, e: ["yes" if all(int(x) % 2 == 0 for x in xs) else "no"],
}


def test_answers_are_correct():
  assert set(_EXPECT) == set(builtin.TASKS)
  for name, expect in _EXPECT.items():
    for i in range(200):
      ex = builtin.generate(name, i)
      xs = _items(ex)
      assert 3 <= len(xs) <= 6
      want = expect(xs, ex)
      assert ex["answer"] == (" ".join(want) if want else "none"), (name, i, ex)


def test_same_input_different_instruction_different_output():
  # Example i has the same items in every task that accepts that kind of item...
  for i in range(50):
    by_items = collections.defaultdict(list)
    for name in builtin.TASKS:
      if name not in ("is_sorted", "all_even"):  # these adjust the input to balance yes/no
        by_items[builtin.generate(name, i)["items"]].append(name)
    assert max(len(v) for v in by_items.values()) >= 9
  # ...and the instruction decides the output: across tasks one input gets many distinct answers.
  answers = {builtin.generate(name, 7)["answer"] for name in builtin.TASKS}
  assert len(answers) >= 10


def test_deterministic_and_seed_and_split_dependent():
  a = [builtin.generate("reverse", i) for i in range(20)]
  assert a == [builtin.generate("reverse", i) for i in range(20)]
  assert a != [builtin.generate("reverse", i, seed=1) for i in range(20)]
  assert a != [builtin.generate("reverse", i, split="validation") for i in range(20)]
  src = builtin.BuiltinSource("reverse")
  assert len(src.load("train")) == builtin.SPLIT_SIZES["train"]
  assert src.load("train")[3] == a[3] and src.load("train")[-1] == builtin.generate("reverse", 19999)


def test_clusters_and_balance():
  assert len(builtin.CLUSTERS) == 6 and all(len(v) == 3 for v in builtin.CLUSTERS.values())
  for name in builtin.CLUSTERS["check"]:
    yes = sum(builtin.generate(name, i)["answer"] == "yes" for i in range(400))
    assert 120 <= yes <= 280, (name, yes)
  # Items repeat often enough that counting and removing are not trivial.
  counts = [int(builtin.generate("count_occurrences", i)["answer"]) for i in range(400)]
  assert sum(c >= 2 for c in counts) > 80 and sum(c == 0 for c in counts) > 20


def test_rationales_match_answers():
  for i in range(50):
    ex = builtin.generate("count_even", i)
    evens = [x for x in _items(ex) if int(x) % 2 == 0]
    if evens:
      assert ex["rationale"].startswith("The even ones are ") and evens[-1] in ex["rationale"]
    else:
      assert ex["rationale"] == "None of them is even."
    ex = builtin.generate("count_items", i)
    assert ex["rationale"].count(",") == len(_items(ex)) - 1
