"""Turn a task's record into a prompt/answer pair, with the Flan-style ablation knobs.

Per example, from one seeded random generator (so a pipeline is deterministic for its seed):

1. style: inverted with probability `inversion_rate` (when the task has inverted templates), else
   chain-of-thought with probability `cot_rate` (when its examples carry rationales), else standard;
2. template within that style: random, or round-robin over the task's stream of examples;
3. answer options: the "OPTIONS:" block with probability `options_rate` (classification tasks only);
4. few-shot: with probability `few_shot_rate`, `min_shots`..`max_shots` exemplars drawn from the task's
   exemplar split, never the evaluated record itself nor any record with the same prompt, each
   rendered with the same template as "prompt\\nanswer", joined by 1-3 newlines.

SuperNI templates build their own demonstrations (definition + positive examples), so their shot
count is the number of demonstrations that fit. Chat-rendered examples (`chat.ChatFields`) skip all of this:
their prompt is the chat format's rendering, and they carry it whole as "chat" (text and scored spans).
Every rendered example carries the task index, template id and shot count.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from instruct_jax.data import sources
from instruct_jax.data import superni
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib

TEMPLATE_CHOICES = ("random", "round_robin")
SEPARATORS = ("\n", "\n\n", "\n\n\n")


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """Template-diversity knobs (see the module docstring).

  Attributes:
    num_templates: use only the first N standard templates of each task (None: all); with template_ids,
      the first N standard templates among those ids (e.g. ids 0-7 kept for training, 8-10 held out for
      evaluation, and num_templates=2 trains on templates 0 and 1).
    template_ids: use only these template ids, of every kind (e.g. held-out templates for evaluation).
    template_choice: "random" or "round_robin".
    few_shot_rate: share of examples rendered few-shot.
    max_shots: most exemplars in a few-shot prompt (Flan uses up to 5).
    min_shots: fewest exemplars in a few-shot prompt (min_shots = max_shots = k gives exactly k-shot).
    options_rate: share of classification examples that show the answer options.
    inversion_rate: share of examples (of tasks with inverted templates) rendered inverted.
    cot_rate: share of examples (of tasks with rationales) rendered with chain-of-thought targets.
  """
  num_templates: int | None = None
  template_ids: tuple[int, ...] | None = None
  template_choice: str = "random"
  few_shot_rate: float = 0.0
  max_shots: int = 5
  min_shots: int = 1
  options_rate: float = 1.0
  inversion_rate: float = 0.0
  cot_rate: float = 0.0

  def __post_init__(self):
    for name in ("few_shot_rate", "options_rate", "inversion_rate", "cot_rate"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"RenderConfig.{name} must be in [0, 1], got {value}")
    if self.template_choice not in TEMPLATE_CHOICES:
      raise ValueError(f"RenderConfig.template_choice must be one of {TEMPLATE_CHOICES}, got "
                       f"{self.template_choice!r}")
    if not 1 <= self.min_shots <= self.max_shots:
      raise ValueError(f"RenderConfig needs 1 <= min_shots <= max_shots, got {self.min_shots}, {self.max_shots}")
    if self.num_templates is not None and self.num_templates < 1:
      raise ValueError(f"RenderConfig.num_templates must be >= 1, got {self.num_templates}")
    if self.template_ids is not None:
      object.__setattr__(self, "template_ids", tuple(int(i) for i in self.template_ids))


def select_templates(task: tasks_lib.Task, cfg: RenderConfig) -> dict[str, list[templates_lib.Template]]:
  """The task's usable templates by style: "standard" (incl. superni), "inverted", "cot".

  Raises ValueError if the selection leaves the task no template at all.
  """
  by_style: dict[str, list[templates_lib.Template]] = {"standard": [], "inverted": [], "cot": []}
  for t in task.templates:
    by_style["standard" if t.kind == "superni" else t.kind].append(t)
  if cfg.template_ids is not None:
    wanted = set(cfg.template_ids)
    by_style = {k: [t for t in v if t.id in wanted] for k, v in by_style.items()}
  if cfg.num_templates is not None:  # the first N standard templates (of the template_ids pool, if set)
    by_style["standard"] = by_style["standard"][:cfg.num_templates]
  if not task.has_rationale:
    by_style["cot"] = []
  if not any(by_style.values()):
    raise ValueError(f"task {task.name!r} has no usable template among ids {cfg.template_ids} "
                     f"(it has {len(task.templates)} templates)")
  return by_style


class Renderer:
  """Renders examples of one task; call it with (source index, stream position, rng). `pool`: only the first
  `pool` examples of the split are in use (data.train_fraction), so few-shot exemplars come from them too;
  `excluded`: indices of the split never used as exemplars (decontamination)."""

  def __init__(self, task: tasks_lib.Task, cfg: RenderConfig, *, task_index: int = 0, split: str = "train",
               fits: Callable[[str], bool] | None = None, pool: int | None = None, excluded=None):
    self.task, self.cfg, self.task_index, self.split, self.fits = task, cfg, task_index, split, fits
    self.pool = pool
    self.excluded = frozenset(int(i) for i in excluded) if excluded is not None else frozenset()
    self.templates = select_templates(task, cfg)

  def _pick(self, stream_pos: int, rng: np.random.Generator) -> templates_lib.Template:
    style = "standard"
    if self.templates["inverted"] and rng.random() < self.cfg.inversion_rate:
      style = "inverted"
    elif self.templates["cot"] and rng.random() < self.cfg.cot_rate:
      style = "cot"
    # When only inverted or chain-of-thought ids were selected, those are used whatever the rates.
    choices = self.templates[style] or next(v for v in self.templates.values() if v)
    if self.cfg.template_choice == "round_robin":
      return choices[stream_pos % len(choices)]
    return choices[int(rng.integers(len(choices)))]

  def _fill(self, t: templates_lib.Template, fields: Mapping[str, Any], with_options: bool) -> tuple[str, str]:
    values = dict(fields)
    options = fields.get("options")
    block = templates_lib.options_block(options) if with_options and options else ""
    values["options"] = block
    text = t.inputs if block else t.inputs.replace("{options}\n", "")
    inputs = templates_lib.fill(text, values, task=self.task.name, template_id=t.id)
    if block and "{options}" not in t.inputs:
      inputs = inputs.rstrip() + "\n\n" + block
    targets = templates_lib.fill(t.targets, values, task=self.task.name, template_id=t.id)
    return inputs.rstrip() if not block else inputs, targets

  def _exemplars(self, index: int, record_id: Any, k: int, prompt: str, t: templates_lib.Template,
                 with_options: bool, rng: np.random.Generator) -> list[str]:
    split = self.task.exemplar_split
    n = self.task.num_examples(split)
    if split == self.split and self.pool is not None:
      n = min(n, self.pool)
    out: list[str] = []
    tried: set[int] = set()
    # Draw a few more candidates than needed: some are the example itself or render the same prompt.
    for j in rng.permutation(n)[:4 * k + 4] if n <= 4096 else rng.integers(0, n, 4 * k + 4):
      j = int(j)
      if len(out) == k:
        break
      if j in tried or (split == self.split and (j == index or j in self.excluded)):
        continue
      tried.add(j)
      fields = self.task.example(split, j)
      if fields is None or (record_id is not None and fields.get("id") == record_id):
        continue
      ex_inputs, ex_targets = self._fill(t, fields, with_options)
      if ex_inputs == prompt:
        continue
      out.append(f"{ex_inputs}\n{ex_targets}")
    return out

  def __call__(self, index: int, stream_pos: int, rng: np.random.Generator) -> dict[str, Any] | None:
    fields = self.task.example(self.split, index)
    if fields is None:
      return None
    if "chat" in fields:  # rendered by its chat format (`chat.ChatFields`): no templates, options or exemplars
      c = fields["chat"]
      out = {"inputs": c["inputs"], "targets": c["targets"], "references": [c["targets"]],
             "task_index": self.task_index, "template_id": 0, "shots": 0, "source_index": index,
             "chat": {"text": c["text"], "spans": c["spans"], "writes_bos": c.get("writes_bos", False)}}
      if "rejected_chat" in fields:  # a preference pair: the rejected response, rendered after the same prompt
        r = fields["rejected_chat"]
        out.update(rejected=r["targets"], rejected_chat={"text": r["text"], "spans": r["spans"],
                                                         "writes_bos": r.get("writes_bos", False)})
      return out
    t = self._pick(stream_pos, rng)
    with_options = bool(fields.get("options")) and rng.random() < self.cfg.options_rate
    shots = 0
    if t.kind == "superni":
      inputs, shots = superni.encode(
          fields["definition"], fields["input"], positive_examples=fields["positive_examples"],
          negative_examples=fields["negative_examples"], use_definition=t.param("definition"),
          num_positive=t.param("positives"), num_negative=t.param("negatives"),
          explanations=t.param("explanations"), fits=self.fits)
      targets = fields["answer"]
    else:
      inputs, targets = self._fill(t, fields, with_options)
      if self.cfg.few_shot_rate > 0 and rng.random() < self.cfg.few_shot_rate:
        k = int(rng.integers(self.cfg.min_shots, self.cfg.max_shots + 1))
        demos = self._exemplars(index, fields.get("id"), k, inputs, t, with_options, rng)
        if demos:
          sep = SEPARATORS[int(rng.integers(len(SEPARATORS)))]
          inputs = sep.join([*demos, inputs])
          shots = len(demos)
    if t.kind == "standard" and t.targets == "{answer}" or t.kind == "superni":
      references = list(fields.get("references") or [targets])
    else:
      references = [targets]
    out = {"inputs": inputs, "targets": targets, "references": references, "task_index": self.task_index,
           "template_id": t.id, "shots": shots, "source_index": index}
    if "rejected" in fields:  # a preference pair (its one template puts the prompt in whole, the answer as target)
      out["rejected"] = fields["rejected"]
    return out


def render_split(task: tasks_lib.Task, split: str, cfg: RenderConfig, *, n: int | None = None, seed: int = 0,
                 task_index: int = 0, fits: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
  """The first `n` examples of `split` rendered in order (deterministic; for evaluation and previews)."""
  renderer = Renderer(task, cfg, task_index=task_index, split=split, fits=fits)
  total = task.num_examples(split) if n is None else min(n, task.num_examples(split))
  out = []
  for i in range(total):
    ex = renderer(i, i, np.random.default_rng([seed, task_index, i]))
    if ex is not None:
      out.append(ex)
  if total and not out:
    raise sources.DataError(f"task {task.name!r} split {split!r}: its preprocessing dropped all of the first {total} "
                            "records (GLUE and SuperGLUE test splits have no labels); use another split "
                            "(config.eval.split)")
  return out


def sample_texts(rates: Mapping[str, float], catalogue: Mapping[str, tasks_lib.Task], cfg: RenderConfig, *,
                 n: int, seed: int = 0, split: str = "train") -> list[str]:
  """`n` rendered prompts and answers drawn from tasks with the given rates (e.g. to train a vocabulary)."""
  names = sorted(rates)
  p = np.array([rates[k] for k in names], dtype=np.float64)
  rng = np.random.default_rng(seed)
  counts = rng.multinomial(n, p / p.sum())
  texts: list[str] = []
  for ti, (name, count) in enumerate(zip(names, counts)):
    task = catalogue[name]
    renderer = Renderer(task, cfg, task_index=ti, split=split)
    size = task.num_examples(split)
    for j in range(int(count)):
      ex = renderer(int(rng.integers(size)), j, rng)
      if ex is not None:
        texts.extend([ex["inputs"], ex["targets"]])
  return texts


def shares(task_indices: Sequence[int], num_tasks: int) -> np.ndarray:
  """Realised share of each task index among `task_indices`."""
  counts = np.bincount(np.asarray(task_indices, dtype=np.int64), minlength=num_tasks)
  return counts / max(1, counts.sum())
