"""Template files and rendering: golden outputs, safe substitution, errors that name task/template/field."""
import pytest

from instruct_jax.data import builtin
from instruct_jax.data import render
from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates


def _task(entries, records):
  tmpl = templates.parse({"demo": entries}, "inline")["demo"]
  return tasks_lib.Task("demo", sources.MemorySource({"train": records}), tmpl)


def test_fill_is_plain_substitution():
  values = {"a": "x", "b": ["p", "q"], "c": 3}
  assert templates.fill("{a}-{b}-{c} {{a}} {{", values, task="t", template_id=0) == "x-p, q-3 {a} {"
  # Attribute access, indexing and expressions are not fields; they are refused, never evaluated.
  with pytest.raises(templates.TemplateError, match="stray"):
    templates.fill("{a.__class__}", values, task="t", template_id=0)
  with pytest.raises(templates.TemplateError, match="stray"):
    templates.fill("{b[0]}", values, task="t", template_id=0)


def test_missing_field_names_task_template_field():
  task = _task(["Q: {question}", "Sort {items} by {colour}"], [{"items": "1 2", "answer": "1 2"}])
  with pytest.raises(templates.TemplateError, match=r"task 'demo' template 1: field 'colour' is not in the example"):
    render.render_split(task, "train", render.RenderConfig(template_ids=(1,)))


def test_parse_rejects_bad_entries():
  with pytest.raises(templates.TemplateError, match=r"task 't': template 1: unknown kind 'sideways'"):
    templates.parse({"t": ["ok {answer}", {"kind": "sideways", "inputs": "x"}]}, "f.yaml")
  with pytest.raises(templates.TemplateError, match=r"template 0: stray '\}'"):
    templates.parse({"t": ["a } b"]}, "f.yaml")
  with pytest.raises(templates.TemplateError, match=r"template 0: unknown fields \['target'\]"):
    templates.parse({"t": [{"inputs": "x", "target": "y"}]}, "f.yaml")
  with pytest.raises(templates.TemplateError, match="non-empty list"):
    templates.parse({"t": []}, "f.yaml")


def test_malformed_yaml_reports_line(tmp_path):
  path = tmp_path / "bad.yaml"
  path.write_text("t:\n  - \"fine\"\n  - \"unclosed\n  - x: [\n")
  with pytest.raises(templates.TemplateError, match=r"bad\.yaml:\d+: malformed YAML"):
    templates.load_file(path)


def test_golden_builtin_renderings():
  tasks = tasks_lib.builtin_tasks()
  fields = {"items": "3 1 2", "kind": "numbers", "k": 2, "item": "1", "threshold": 1, "answer": "1 2 3",
            "rationale": "r.", "options": ["yes", "no"]}

  def one(name, tid, **cfg):
    t = tasks[name].templates[tid]
    r = render.Renderer(tasks[name], render.RenderConfig(**cfg))
    return r._fill(t, fields, with_options=bool(cfg.get("options_rate", 0)))

  assert one("builtin/sort_ascending", 0) == ("Sort these numbers from smallest to largest: 3 1 2", "1 2 3")
  assert one("builtin/first_k", 1) == ("3 1 2\nKeep only the first 2 of these numbers.", "1 2 3")
  assert one("builtin/count_items", 11) == ("How many entries are in this list: 3 1 2\nCount them one by one.",
                                            "r. So the answer is 1 2 3.")
  # Options: appended when the template has no {options}; placed where {options} stands otherwise;
  # a line holding only {options} disappears when options are off.
  assert one("builtin/contains", 0, options_rate=1.0) == ("Is 1 in the list 3 1 2?\n\nOPTIONS:\n- yes\n- no",
                                                          "1 2 3")
  assert one("builtin/contains", 9, options_rate=1.0) == (
      "Input: 3 1 2\nTask: is 1 present\nOPTIONS:\n- yes\n- no\nOutput:", "1 2 3")
  assert one("builtin/contains", 9) == ("Input: 3 1 2\nTask: is 1 present\nOutput:", "1 2 3")
  assert one("builtin/reverse", 11) == ("Someone reversed a list and got 1 2 3. What was the original list?", "3 1 2")


def test_shipped_template_files_parse_and_use_known_fields():
  allowed = {
      "builtin": {"items", "kind", "k", "item", "threshold", "answer", "rationale", "options"},
      "nlu": {"premise", "hypothesis", "passage", "question", "context", "title", "answer", "options"},
      "instructions": {"prompt", "answer", "instruction", "input", "output", "system"},
  }
  for name, fields in allowed.items():
    for task, tmpls in templates.load(name).items():
      for t in tmpls:
        assert t.fields <= fields, (name, task, t.id, t.fields - fields)
        assert len({(t.inputs, t.targets, t.params) for t in tmpls}) == len(tmpls), (name, task)


def test_every_builtin_template_renders_every_generated_example():
  tasks = tasks_lib.builtin_tasks()
  for name, task in tasks.items():
    for i in range(5):
      fields = task.example("train", i)
      for t in task.templates:
        if t.kind == "cot" and not task.has_rationale:
          continue
        inputs, targets = render.Renderer(task, render.RenderConfig())._fill(t, fields, with_options=True)
        assert inputs.strip() and targets.strip(), (name, t.id)
        assert "{" not in inputs and "}" not in inputs, (name, t.id, inputs)


def test_builtin_tasks_have_ten_own_templates():
  tmpl = templates.load("builtin")
  assert set(tmpl) == set(builtin.TASKS)
  seen = set()
  for name, tmpls in tmpl.items():
    standard = [t.inputs for t in tmpls if t.kind == "standard"]
    assert len(standard) >= 10, name
    assert not seen & set(standard), f"{name} shares a template with another task"
    seen |= set(standard)
