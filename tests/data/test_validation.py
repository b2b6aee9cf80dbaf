"""Bad data fails at the start with the file and line, never as a hang or a bare numpy/codec error."""
import signal

import ml_collections
import numpy as np
import pytest

from instruct_jax import configs
from instruct_jax.data import mixtures, pipeline, report, sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib
from instruct_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  words = ["sort", "these", "numbers", "from", "smallest", "to", "largest", "put", "them", "in", "order"]
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words, 8)) + " " + " ".join(map(str, rng.integers(0, 10, 5))) for _ in range(300)]
  return tokenizer_lib.train(texts, vocab_size=100, out_dir=tmp_path_factory.mktemp("spm"))


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty (no records)"),
    (b"\n  \n", "the file is empty (no records)"),
    (b'{"instruction": "a", "output": ""}\n{"instruction": "b", "output": "  "}\n',
     "every record's output is empty (2, the first at {path}:1)"),
    (b'{"instruction": "a", "output": "x"}\n{"instruction": "caf\xe9", "output": "y"}\n',
     "{path}:2: not UTF-8 text (byte 0xe9 at column 21)"),
    (b'{"instruction": "a", "output": "x"}\n{"instruction": \n', "{path}:2: malformed JSON line"),
])
def test_bad_instruction_files_name_file_and_line(tmp_path, content, expected):
  path = tmp_path / "data.jsonl"
  path.write_bytes(content)
  with pytest.raises(sources.DataError) as e:
    sources.InstructionSource({"train": str(path)}).load("train")
  assert expected.format(path=path) in str(e.value)


def test_a_json_file_that_is_not_utf8_names_its_line(tmp_path):
  path = tmp_path / "data.json"
  path.write_bytes(b'[\n {"instruction": "a", "output": "x"},\n {"instruction": "\xff", "output": "y"}\n]\n')
  with pytest.raises(sources.DataError, match=r"data.json:3: not UTF-8 text \(byte 0xff\)"):
    sources.InstructionSource({"train": str(path)}).load("train")


def test_lenient_mode_skips_and_counts_bad_lines_but_an_all_bad_file_still_fails(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_bytes(b'{"instruction": "a", "output": "x"}\nnot json\n{"instruction": "\xff", "output": "y"}\n')
  source = sources.InstructionSource({"train": str(path)}, strict=False)
  assert [r["output"] for r in source.load("train")] == ["x"]
  assert source.stats.bad_lines == 2 and f"{path}:3: not UTF-8" in source.stats.problems[1]
  path.write_bytes(b"not json\n")
  with pytest.raises(sources.DataError, match="no record could be read"):
    sources.InstructionSource({"train": str(path)}, strict=False).load("train")


def test_strict_is_a_config_key_reachable_from_the_command_line():
  config = configs.from_command_line(["--config=configs/tiny.py", "--config.data.strict=False"])
  assert config.data.strict is False
  config.data_paths.instruction_files = ml_collections.ConfigDict({"mine": "x.jsonl"})
  paths = tasks_lib.DataPaths.from_config(config.data_paths, strict=config.data.strict)
  assert mixtures.task_catalogue(paths)["mine"].source.strict is False


def _config(**data):
  c = configs.load("configs/tiny.py")
  for key, value in data.items():
    c.data[key] = value
  return c


def test_configured_files_are_all_read_at_start_and_unused_ones_reported(tmp_path, capsys):
  good = tmp_path / "good.jsonl"
  good.write_text('{"instruction": "say hi", "output": "hi"}\n')
  c = _config()
  c.data_paths.instruction_files = ml_collections.ConfigDict({"unused": str(good), "missing": str(tmp_path / "no")})
  tasks, _ = mixtures.catalogues(tasks_lib.DataPaths.from_config(c.data_paths))
  with pytest.raises(sources.DataError, match="no such file"):
    report.check_files(c, tasks, {"builtin/sort_ascending": 1.0})
  c.data_paths.instruction_files = ml_collections.ConfigDict({"unused": str(good)})
  tasks, _ = mixtures.catalogues(tasks_lib.DataPaths.from_config(c.data_paths))
  report.check_files(c, tasks, {"builtin/sort_ascending": 1.0})
  assert "config.data_paths.instruction_files.unused is read and valid, but neither" in capsys.readouterr().out


def test_template_words_longer_than_the_row_are_a_length_error(tok):
  tasks, mixes = mixtures.catalogues()
  t = tasks["builtin/sort_ascending"].templates[0]
  n = tok.encode(pipeline.template_words(t)).size
  assert "{" not in pipeline.template_words(t) and n > 3
  for kind, lengths in (("encoder_decoder", dict(inputs_length=n, targets_length=8)),
                        ("decoder", dict(inputs_length=n // 2, targets_length=n - n // 2 + 1))):
    cfg = pipeline.PipelineConfig(mixture="builtin/sort_ascending", model_kind=kind, **lengths)
    with pytest.raises(pipeline.LengthError, match=f"template 0's own words take {n} tokens"):
      pipeline.make_pipeline(cfg, tok, tasks=tasks, mixtures=mixes)
  ok = pipeline.PipelineConfig(mixture="builtin/sort_ascending", inputs_length=n + 1, targets_length=8,
                               render={"template_ids": (0,)})
  pipeline.check_lengths(ok, tok, tasks, ["builtin/sort_ascending"])
  with pytest.raises(pipeline.LengthError, match="targets_length=1 leaves no room"):
    pipeline.check_lengths(pipeline.PipelineConfig(mixture="x", inputs_length=64, targets_length=1), tok, tasks, [])


def test_a_task_whose_examples_all_drop_fails_instead_of_hanging(tok):
  """Outputs that tokenize to nothing are dropped one by one; the pipeline gives up with a message."""
  task = tasks_lib.Task(name="mine/blank", source=sources.MemorySource({"train": [
      {"question": f"q {i}", "answer": ""} for i in range(30)]}),
      templates=(templates_lib.Template(id=0, inputs="{question}", targets="{answer}"),))
  cfg = pipeline.PipelineConfig(mixture="mine/blank", inputs_length=32, targets_length=8, batch_size=2)
  pipe = pipeline.make_pipeline(cfg, tok, tasks={"mine/blank": task}, mixtures={})

  def hang(signum, frame):
    raise AssertionError("the pipeline hung")
  previous = signal.signal(signal.SIGALRM, hang)
  signal.alarm(60)
  try:
    with pytest.raises(sources.DataError, match="'mine/blank': none of its first 30 examples can be trained on"):
      next(iter(pipe.dataset))
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_empty_task_is_an_error_naming_it():
  task = tasks_lib.Task(name="mine/empty", source=sources.MemorySource({"train": []}),
                        templates=(templates_lib.Template(id=0, inputs="{question}"),))
  cfg = pipeline.PipelineConfig(mixture="mine/empty")
  with pytest.raises(sources.DataError, match="task 'mine/empty' has no 'train' examples"):
    pipeline.rendered_examples(cfg, {"mine/empty": task}, {})
