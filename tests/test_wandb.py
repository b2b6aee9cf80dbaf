"""Weights & Biases as a second tracker: an offline run directory holds the same scalars as metrics.jsonl, the
config, and the evaluation tables; a restart continues the same W&B run."""
import glob
import json
import pathlib
import struct

import pytest

wandb_proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")

from instruct_jax import configs, train  # noqa: E402
from instruct_jax import metrics as metrics_lib  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _records(path: str):
  """The protobuf records of a .wandb file (a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records
  with a 7-byte header each: crc32, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
  data, pos, pending, block = open(path, "rb").read(), 7, b"", 32768
  assert data[:4] == b":W&B"
  while pos + 7 <= len(data):
    left = block - pos % block
    _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
    if left < 7 or (length == 0 and kind == 0):
      pos += left
      continue
    chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
    pending = chunk if kind in (1, 2) else pending + chunk
    if kind in (1, 4):
      record = wandb_proto.Record()
      record.ParseFromString(pending)
      yield record


def _history(run_dir: str) -> tuple[dict[int, dict], dict]:
  steps, config = {}, {}
  for record in _records(glob.glob(f"{run_dir}/run-*.wandb")[0]):
    kind = record.WhichOneof("record_type")
    if kind == "history":
      items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
      steps.setdefault(items["_step"], {}).update(items)
    elif kind in ("config", "run"):
      updates = record.config.update if kind == "config" else record.run.config.update
      config.update({i.key: json.loads(i.value_json) for i in updates})
  return steps, config


@pytest.mark.slow  # two tiny runs with W&B's service process: 30 s
def test_an_offline_wandb_run_holds_the_runs_scalars_config_and_tables(tmp_path):
  config = configs.load(ROOT / "configs" / "tiny.py")
  config.total_steps, config.checkpoint_every, config.eval.num_examples = 4, 2, 1
  config.metrics.wandb, config.metrics.wandb_mode = "instruct-jax-test", "offline"
  work = tmp_path / "run"
  train.train_and_evaluate(config, str(work))
  run_dir, = glob.glob(str(work / "wandb" / "offline-run-*"))
  steps, logged_config = _history(run_dir)
  rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  expected: dict[int, dict] = {}
  for row in rows:
    expected.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k != "step"})
  assert sorted(steps) == sorted(expected) == [1, 2, 3, 4]
  for step, scalars in expected.items():
    for key, value in scalars.items():
      assert steps[step][key] == pytest.approx(value, rel=1e-6), (step, key)
  assert logged_config["optim"]["learning_rate"] == config.optim.learning_rate
  assert logged_config["metrics"]["wandb"] == "instruct-jax-test"
  tables = glob.glob(f"{run_dir}/files/media/table/eval_results_*.table.json")
  table = json.loads(open(tables[0]).read())
  assert table["columns"] == list(metrics_lib.RESULT_COLUMNS) and len(table["data"]) > 10
  # A restart (more steps) logs to the same W&B run.
  run_id = (work / metrics_lib.WANDB_RUN_ID).read_text().strip()
  config.total_steps = 6
  train.train_and_evaluate(config, str(work))
  assert (work / metrics_lib.WANDB_RUN_ID).read_text().strip() == run_id
  second = [d for d in glob.glob(str(work / "wandb" / "offline-run-*")) if d != run_dir]
  assert len(second) == 1 and second[0].endswith(run_id)
  assert sorted(_history(second[0])[0]) == [5, 6]
