"""A chat run end to end: train a tiny decoder on conversations in ChatML, evaluate its chat task, generate --chat,
export the chat template (slow: three subprocesses)."""
import json
import sys

import pytest

from tests.test_train import TINY, _run

TOPICS = ["red apples", "blue boats", "green tea", "small cats", "tall trees", "warm bread", "old maps", "new shoes"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["decoder", "t5"])
def test_chat_run_trains_evaluates_generates_and_exports(kind, tmp_path):
  lines = []
  for i, topic in enumerate(TOPICS * 3):
    messages = [{"role": "system", "content": "Answer in a few words."},
                {"role": "user", "content": f"Tell me about {topic}."}, {"role": "assistant", "content": topic},
                {"role": "user", "content": f"And number {i}?"}, {"role": "assistant", "content": f"It is {i}."}]
    record = {"messages": messages} if i % 2 else {"conversations": [
        {"from": {"system": "system", "user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
        for m in messages]}
    lines.append(json.dumps(record))
  data = tmp_path / "chat.jsonl"
  data.write_text("\n".join(lines) + "\n")
  work = tmp_path / "w"
  _run([sys.executable, "-m", "instruct_jax.train", f"--config={TINY}:{kind}", f"--workdir={work}",
        "--config.total_steps=3", "--config.checkpoint_every=0", "--config.log_every=1",
        f"--config.data_paths.chat_files.talk=train={data},test={data}", "--config.data.mixture=chat",
        "--config.data.chat_format=chatml", "--config.data.render.template_ids=(0,)", "--config.eval.tasks=('talk',)",
        "--config.eval.held_out_cluster=", "--config.eval.seen_templates=()", "--config.eval.unseen_templates=()",
        "--config.eval.num_examples=2", "--config.data.inputs_length=64", "--config.data.targets_length=32"])
  pieces = (work / "tokenizer" / "spm.vocab").read_text().split("\n")
  assert any(p.startswith("<|im_end|>\t") for p in pieces)  # the format's specials are pieces of their own
  predictions = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
  assert predictions[0]["inputs"].endswith("And number 0?<|im_end|>\n<|im_start|>assistant\n")
  assert predictions[0]["references"] == ["It is 0."]
  evaluated = tmp_path / "eval"
  _run([sys.executable, "-m", "instruct_jax.evaluate", f"--workdir={work}", "--tasks=talk", "--num_examples=1",
        f"--output_dir={evaluated}"])
  rows = [json.loads(line) for line in (evaluated / "predictions.jsonl").read_text().splitlines()]
  assert [r["inputs"] for r in rows] == [predictions[0]["inputs"]]  # evaluate renders as the trainer did
  out = tmp_path / "out.jsonl"
  _run([sys.executable, "-m", "instruct_jax.generate", f"--workdir={work}", "--chat", "--system=Be brief.",
        "--prompt=Tell me about old maps.", f"--output={out}", "--max_new_tokens=4"])
  generated = [json.loads(line) for line in out.read_text().splitlines()]
  assert generated[0]["prompt"] == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTell me about old "
                                    "maps.<|im_end|>\n<|im_start|>assistant\n")
  assert generated[0]["messages"][-1] == {"role": "user", "content": "Tell me about old maps."}
  hf = tmp_path / "hf"
  _run([sys.executable, "-m", "instruct_jax.convert", "--to=hf", f"--src={work}", f"--dst={hf}"])
  template = json.loads((hf / "tokenizer_config.json").read_text())["chat_template"]
  assert template.startswith("{{- bos_token -}}") == (kind == "decoder") and "<|im_start|>" in template
