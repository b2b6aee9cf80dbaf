"""Mixtures written in the config ("instructions:0.5,chat:0.3,builtin:0.2"): parsing, rates, the rates a run realises
over three kinds of source, and the table the trainer and the dry run print."""
import json
import pathlib

import numpy as np
import pytest

from instruct_jax import configs
from instruct_jax.data import chat
from instruct_jax.data import flan2021
from instruct_jax.data import mixtures
from instruct_jax.data import pipeline
from instruct_jax.data import report
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import tokenizer as tokenizer_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = "instructions:0.5,chat:0.3,builtin:0.2"


def test_written_mixtures_parse_to_weights_or_examples_proportional():
  m = mixtures.parse_spec(SPEC)
  assert m.members == ("instructions", "chat", "builtin") and m.rate == "weights" and m.weights == (0.5, 0.3, 0.2)
  m = mixtures.parse_spec(" a , b+c ")
  assert m.members == ("a", "b", "c") and m.rate == "examples" and m.cap is None
  assert mixtures.is_spec("a:1") and mixtures.is_spec("a,b") and not mixtures.is_spec("builtin/sort_ascending")
  for bad, message in (("a:0.5,b", r"weight every member or none \('b' has no weight\)"),
                       ("a,,b", "an empty member"), ("a,b,", "an empty member"),
                       ("a:x", r"the weight 'x' is not a number"), ("a:0,b:1", "a weight must be a positive number"),
                       ("a:nan", "a weight must be a positive number"), ("a:inf", "a weight must be a positive"),
                       ("a:1,a:2", "'a' is named twice"), (":3", "has no name")):
    with pytest.raises(mixtures.MixtureSpecError, match=message):
      mixtures.parse_spec(bad)


def test_a_held_out_flan_cluster_leaves_the_flan_member_of_a_written_mixture():
  assert flan2021.training_mixture("flan2021:0.3,chat:0.7", "nli") == "flan2021_no_nli:0.3,chat:0.7"
  assert flan2021.training_mixture("chat,flan2021", "nli") == "chat,flan2021_no_nli"
  assert flan2021.training_mixture("flan2021_cot:1,chat:1", "nli") == "flan2021_cot:1,chat:1"
  assert flan2021.training_mixture("flan2021:1", "") == "flan2021:1"


def _files(tmp_path):
  instructions = tmp_path / "mine.jsonl"
  instructions.write_text("".join(json.dumps({"instruction": f"Repeat the word {w}.", "output": w}) + "\n"
                                  for w in ("apple", "river", "stone", "cloud", "green", "seven")))
  conversations = tmp_path / "talk.jsonl"
  conversations.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {w}."},
                                                            {"role": "assistant", "content": w}]}) + "\n"
                                   for w in ("hello", "thanks", "bye")))
  return str(instructions), str(conversations)


@pytest.fixture(scope="module")
def three_kinds(tmp_path_factory):
  """Instruction and chat files and the built-in tasks, the two files rendered with ChatML."""
  root = tmp_path_factory.mktemp("three")
  instructions, conversations = _files(root)
  fmt = chat.resolve_format("chatml", None)
  paths = tasks_lib.DataPaths(instruction_files={"mine": instructions}, chat_files={"talk": conversations},
                              chat_format=fmt)
  tasks, mixes = mixtures.catalogues(paths)
  texts = [json.dumps(json.loads(line)) for line in open(instructions)] * 20 + ["1 2 3 sort count even"] * 20
  tok = tokenizer_lib.train(texts, vocab_size=120, out_dir=root / "spm", user_defined_symbols=fmt.user_symbols())
  return tasks, mixes, tok


def test_three_kinds_of_source_realise_their_weights_within_two_percent(three_kinds):
  tasks, mixes, tok = three_kinds
  rates = mixtures.task_rates(SPEC, tasks, mixes)
  assert rates["mine"] == pytest.approx(0.5) and rates["talk"] == pytest.approx(0.3)
  assert sum(p for t, p in rates.items() if t.startswith("builtin/")) == pytest.approx(0.2)
  assert mixtures.member_rates(SPEC, tasks, mixes) == pytest.approx({"instructions": 0.5, "chat": 0.3, "builtin": 0.2})
  cfg = pipeline.PipelineConfig(mixture=SPEC, model_kind="decoder", inputs_length=96, targets_length=16,
                                batch_size=8, pack=False, seed=3)
  # The stream the run draws (no data read), as the start-of-run table and mixture.json report it.
  table = report.mixture_rates(cfg, tasks, mixes)
  for member, want in (("instructions", 0.5), ("chat", 0.3), ("builtin", 0.2)):
    assert table["members"][member]["rate"] == pytest.approx(want)
    assert abs(table["members"][member]["realised"] - want) < 0.02, table["members"]
  # The rows the pipeline yields: one example per row, counted by task.
  pipe = pipeline.make_pipeline(cfg, tok, tasks=tasks, mixtures=mixes)
  it = iter(pipe.dataset)
  seen = np.concatenate([next(it)["task_index"][:, 0] for _ in range(60)])
  names = np.array(pipe.task_names)[seen]
  shares = {"instructions": np.mean(names == "mine"), "chat": np.mean(names == "talk"),
            "builtin": np.mean(np.char.startswith(names.astype(str), "builtin/"))}
  for member, want in (("instructions", 0.5), ("chat", 0.3), ("builtin", 0.2)):
    assert abs(shares[member] - want) < 0.02, shares
  text = report.format_mixture_rates(table)
  assert f"mixture {SPEC!r}: 20 tasks" in text and "member instructions" in text and "task   mine" in text


def test_examples_proportional_members_take_the_mixing_cap(three_kinds):
  tasks, mixes, _ = three_kinds
  sizes = {"mine": 6, "talk": 3}
  rates = mixtures.member_rates("instructions,chat", tasks, mixes)
  assert rates == pytest.approx({"instructions": 6 / 9, "chat": 3 / 9})
  capped = mixtures.member_rates("instructions,chat", tasks, mixes, cap=3)
  assert capped == pytest.approx({"instructions": 0.5, "chat": 0.5}) and sizes["mine"] > 3


def test_an_unknown_member_names_itself(three_kinds):
  tasks, mixes, _ = three_kinds
  with pytest.raises(KeyError, match=r"unknown task or mixture 'chta'; did you mean 'chat'"):
    mixtures.task_rates("instructions:1,chta:1", tasks, mixes)


def test_the_dry_run_prints_the_written_mixture_and_its_realised_rates(tmp_path, capsys):
  from instruct_jax import train  # pylint: disable=g-import-not-at-top
  instructions, conversations = _files(tmp_path)
  config = configs.load(ROOT / "configs" / "tiny.py", "decoder")
  config.data_paths.instruction_files["mine"] = instructions
  config.data_paths.chat_files["talk"] = conversations
  config.data.chat_format, config.eval.held_out_cluster = "chatml", ""
  config.data.mixture = "mine:0.6,talk:0.25,builtin_order:0.15"
  train.dry_run(config)
  out = capsys.readouterr().out
  assert "data      mixture 'mine:0.6,talk:0.25,builtin_order:0.15': 5 tasks" in out
  for member, rate in (("mine", 0.6), ("talk", 0.25), ("builtin_order", 0.15)):
    line = next(x for x in out.splitlines() if x.strip().startswith(f"member {member} "))
    set_rate, realised = float(line.split()[2]), float(line.split()[3].strip("()"))
    assert set_rate == pytest.approx(rate) and abs(realised - rate) < 0.01, line
