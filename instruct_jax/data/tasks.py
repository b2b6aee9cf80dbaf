"""Tasks (a source, its preprocessing, its templates and how it is scored) and the names of the task catalogue.

The catalogue is a plain dict built by `mixtures.task_catalogue(paths)`; nothing registers itself on import. Names:

    builtin/<task>        the generated tasks of `builtin.py` (always available; no files needed)
    glue/rte, snli, xsum, wmt16_translate/de-en, ...
                          the Flan 2021 catalogue of TFDS datasets (`flan2021.py`: 69 tasks in 13
                          clusters), read with `tfds.data_source` from `paths.tfds_data_dir` (they must
                          be prepared there in array_record format; errors and the preview say how)
    niv2/<task>           every SuperNI task file under `paths.superni_dir/tasks/`
    <name>                each Alpaca / Self-Instruct file in `paths.instruction_files`, and each conversation
                          file in `paths.chat_files` (cluster "chat"; `chat.ChatSource`)
    <name>                each Hugging Face dataset in `paths.hf_datasets` (`hf_datasets.py`): an instruction, chat
                          or preference task as its columns say, read as the files of that kind are

With `paths.chat_format` set, chat tasks and instruction files are rendered with that chat format
(`chat.ChatFields`); instruction files without one keep their plain templates.

A preprocessor turns a source record into template fields, always including `answer` (the training
target) and optionally `references` (all acceptable answers), `options` and `rationale`. It may return
None to drop a record (e.g. unlabelled TFDS test rows).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from instruct_jax import errors
from instruct_jax.data import builtin
from instruct_jax.data import chat
from instruct_jax.data import hf_datasets as hf_datasets_lib
from instruct_jax.data import preferences
from instruct_jax.data import sources
from instruct_jax.data import superni
from instruct_jax.data import templates as templates_lib

METRICS = ("exact_match", "rouge_l", "rank_accuracy")  # rank_accuracy: options ranked by log-likelihood
Preprocessor = Callable[[dict[str, Any]], dict[str, Any] | None]


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """A source plus preprocessing, templates and scoring.

  Attributes:
    name: catalogue name.
    source: where records come from (`load(split)` gives random access).
    templates: the task's templates; ids are positions.
    preprocess: record -> template fields (or None to drop the record); identity when None.
    metric: "exact_match", "rouge_l" or "rank_accuracy" (classification: the options ranked by log-likelihood;
      exact match of the generated answer when no log-likelihood function is given).
    options: answer options shared by every example (an example's own `options` field wins).
    cluster: task cluster, for held-out-cluster evaluation.
    has_rationale: examples carry a `rationale` field, so chain-of-thought templates apply.
    exemplar_split: split that few-shot exemplars come from.
  """
  name: str
  source: sources.Source
  templates: tuple[templates_lib.Template, ...]
  preprocess: Preprocessor | None = None
  metric: str = "exact_match"
  options: tuple[str, ...] | None = None
  cluster: str = ""
  has_rationale: bool = False
  exemplar_split: str = "train"

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f"task {self.name!r}: metric must be one of {METRICS}, got {self.metric!r}")
    if not self.templates:
      raise ValueError(f"task {self.name!r} has no templates")
    ids = [t.id for t in self.templates]
    if ids != list(range(len(ids))):
      raise ValueError(f"task {self.name!r}: template ids must be 0..{len(ids) - 1}, got {ids}")

  def num_examples(self, split: str) -> int:
    return len(self.source.load(split))

  def example(self, split: str, index: int) -> dict[str, Any] | None:
    """Template fields of record `index` of `split`, or None if preprocessing drops it."""
    record = self.source.load(split)[index]
    fields = self.preprocess(record) if self.preprocess else dict(record)
    if fields is None:
      return None
    if "answer" not in fields:
      raise sources.DataError(f"task {self.name!r}: preprocessed record {index} of split {split!r} has no "
                              f"'answer' field (fields: {sorted(fields)})")
    if self.options is not None and "options" not in fields:
      fields["options"] = list(self.options)
    return fields


def closest(name: str, known: Iterable[str], n: int = 3) -> list[str]:
  """Known names closest to `name` (for "did you mean" messages)."""
  known = list(known)
  matches = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
  if not matches:  # Fall back to substring matches, e.g. "rte" -> "glue/rte".
    matches = [k for k in known if name.lower() in k.lower()][:n]
  return matches


class UnknownName(errors.UserError, KeyError):
  """A task or mixture name the catalogue does not hold (a KeyError whose message reads as a sentence)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def lookup(catalogue: Mapping[str, Any], name: str, what: str = "task") -> Any:
  """`catalogue[name]`, or an UnknownName (a KeyError) that suggests the closest known names."""
  if name in catalogue:
    return catalogue[name]
  suggestions = closest(name, catalogue)
  hint = f"; did you mean {', '.join(map(repr, suggestions))}?" if suggestions else ""
  raise UnknownName(f"unknown {what} {name!r}{hint} ({len(catalogue)} {what}s known)")


# --- Preprocessors -------------------------------------------------------------------------------------


def _yes_no(label: int, yes_label: int) -> str | None:
  if label < 0:  # Unlabelled (TFDS test splits).
    return None
  return "yes" if label == yes_label else "no"


def preprocess_rte(r: dict[str, Any]) -> dict[str, Any] | None:
  answer = _yes_no(int(r["label"]), yes_label=0)  # 0 = entailment, 1 = not_entailment.
  return None if answer is None else {"premise": r["sentence1"], "hypothesis": r["sentence2"], "answer": answer}


def preprocess_boolq(r: dict[str, Any]) -> dict[str, Any] | None:
  answer = _yes_no(int(r["label"]), yes_label=1)  # 1 = True.
  return None if answer is None else {"passage": r["passage"], "question": r["question"], "answer": answer}


ANLI_ANSWERS = ("yes", "it is not possible to tell", "no")  # entailment, neutral, contradiction


def preprocess_anli(r: dict[str, Any]) -> dict[str, Any] | None:
  label = int(r["label"])
  if label < 0:
    return None
  return {"premise": r["context"], "hypothesis": r["hypothesis"], "answer": ANLI_ANSWERS[label]}


def preprocess_squad(r: dict[str, Any]) -> dict[str, Any] | None:
  answers = [a for a in r["answers"]["text"] if a.strip()]
  if not answers:
    return None
  return {"context": r["context"], "question": r["question"], "title": r.get("title", "").replace("_", " "),
          "answer": answers[0], "references": answers}


def preprocess_instruction(r: dict[str, Any]) -> dict[str, Any]:
  """Alpaca / Self-Instruct: `prompt` = [system, blank line,] instruction [, blank line, input]."""
  prompt = r["instruction"].strip()
  if r.get("input", "").strip():
    prompt += "\n\n" + r["input"].strip()
  if r.get("system", "").strip():
    prompt = r["system"].strip() + "\n\n" + prompt
  return {**r, "prompt": prompt, "answer": r["output"]}


# --- Catalogue -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataPaths:
  """Where file-backed tasks live; every field is optional (the built-in tasks need none)."""
  superni_dir: str | None = None  # a natural-instructions checkout: tasks/*.json, splits/*.txt
  superni_train_instances: int | None = None  # first N instances of each SuperNI task train (None: all)
  superni_eval_instances: int = superni.NUM_EVAL_INSTANCES  # first N instances of each SuperNI task: its test split
  tfds_data_dir: str | None = None
  instruction_files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> .json/.jsonl
  builtin_seed: int = 0
  strict: bool = True  # instruction files: a malformed line is an error (False: skipped and counted)
  chat_files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> conversations .jsonl
  chat_format: chat.ChatFormat | None = None  # renders chat files (and instruction and preference files, when set)
  preference_files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> preference pairs .jsonl
  hf_datasets: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> dataset dir or file[,options]

  @classmethod
  def from_config(cls, section, *, strict: bool = True, chat_format: chat.ChatFormat | None = None) -> "DataPaths":
    """From a run config's `data_paths` section ("" means unset), its `data.strict` and its resolved chat format."""
    return cls(superni_dir=section.superni_dir or None, superni_train_instances=section.superni_train_instances,
               superni_eval_instances=section.superni_eval_instances, tfds_data_dir=section.tfds_data_dir or None,
               instruction_files=dict(section.instruction_files), strict=strict,
               chat_files=dict(section.chat_files), chat_format=chat_format,
               preference_files=dict(section.preference_files), hf_datasets=dict(section.hf_datasets))


def has_chat_data(section) -> bool:
  """Whether a run config's `data_paths` names conversations: chat files, or Hugging Face datasets with a chat layout
  (each opened, memory-mapped, to read its columns)."""
  if section.chat_files:
    return True
  return any(hf_datasets_lib.HFDatasetSource(name, value).kind == "chat" for name, value in section.hf_datasets.items())


def builtin_tasks(seed: int = 0) -> dict[str, Task]:
  tmpl = templates_lib.load("builtin")
  out = {}
  for name, spec in builtin.TASKS.items():
    out[f"builtin/{name}"] = Task(
        name=f"builtin/{name}", source=builtin.BuiltinSource(name, seed=seed), templates=tmpl[name],
        options=spec.options, cluster=spec.cluster, has_rationale=spec.cluster == "count")
  return out


TFDS_NLU = ("glue/rte", "super_glue/boolq", "anli/r1", "squad/v1.1")  # the first four TFDS tasks (mixture tfds_nlu)


def superni_task(path: str | os.PathLike, *, train_instances: int | None = None,
                 eval_instances: int = superni.NUM_EVAL_INSTANCES) -> Task:
  """A SuperNI task file as a task named niv2/<task name> (instance caps as Tk-Instruct's)."""
  source = superni.SuperNISource(path, num_eval_instances=eval_instances, num_train_instances=train_instances)
  name = pathlib.Path(path).name.removesuffix(".json").removesuffix(".SUBSET")
  return Task(name=f"niv2/{name}", source=source, templates=templates_lib.load("instructions")["superni"],
              metric="rouge_l", cluster="superni")


def superni_tasks(superni_dir: str | os.PathLike, *, train_instances: int | None = None,
                  eval_instances: int = superni.NUM_EVAL_INSTANCES) -> dict[str, Task]:
  task_dir = pathlib.Path(superni_dir) / "tasks"
  if not task_dir.is_dir():
    raise FileNotFoundError(f"SuperNI directory {superni_dir} has no tasks/ folder")
  tasks = [superni_task(p, train_instances=train_instances, eval_instances=eval_instances)
           for p in sorted(task_dir.glob("*.json"))]
  return {t.name: t for t in tasks}


def superni_split(superni_dir: str | os.PathLike, split: str) -> list[str]:
  """Task names (niv2/...) listed in splits/<split>_tasks.txt."""
  path = pathlib.Path(superni_dir) / "splits" / f"{split}_tasks.txt"
  if not path.is_file():
    return []
  return [f"niv2/{line.strip()}" for line in path.read_text().splitlines() if line.strip()]


def split_files(value: str | os.PathLike | Mapping[str, str]) -> dict[str, str]:
  """{split: file} from a mapping, "FILE" (the train split) or "train=FILE,test=FILE" (a command line value)."""
  if not isinstance(value, (str, os.PathLike)):
    return {k: os.fspath(v) for k, v in dict(value).items()}
  text = os.fspath(value)
  parts = [p.strip() for p in text.split(",")]
  if all("=" in p for p in parts):
    return {k.strip(): v.strip() for k, v in (p.split("=", 1) for p in parts)}
  return {"train": text}


CHAT_TEMPLATES = (templates_lib.Template(id=0, inputs="{prompt}"),)  # chat tasks render with their chat format


def _source(files, make: Callable[..., sources.Source], strict: bool) -> sources.Source:
  """`files` itself when it is a source already (e.g. a Hugging Face dataset's), else `make` over its split files."""
  return files if hasattr(files, "load") else make(split_files(files), strict=strict)


def instruction_task(name: str, files: str | Mapping[str, str] | sources.Source, *, strict: bool = True,
                     chat_format: chat.ChatFormat | None = None) -> Task:
  """An Alpaca / Self-Instruct file (or {split: file}, or "train=FILE,test=FILE", or a source of such records) as a
  task scored by ROUGE-L; with a chat format, each record is rendered as the conversation [system?, user, assistant]."""
  source = _source(files, sources.InstructionSource, strict)
  if chat_format is not None:
    return Task(name=name, source=source, templates=CHAT_TEMPLATES,
                preprocess=chat.ChatFields(chat_format, instructions=True), metric="rouge_l", cluster="instructions")
  return Task(name=name, source=source,
              templates=templates_lib.load("instructions")["instructions"], preprocess=preprocess_instruction,
              metric="rouge_l", cluster="instructions")


def chat_task(name: str, files: str | Mapping[str, str] | sources.Source, *, strict: bool = True,
              chat_format: chat.ChatFormat | None = None) -> Task:
  """A file of OpenAI-messages or ShareGPT conversations (or {split: file}, or "train=A,test=B", or a source of such
  records) as a task of cluster "chat" scored by ROUGE-L on its last assistant turn; rendered with `chat_format`
  (ChatError if None)."""
  return Task(name=name, source=_source(files, chat.ChatSource, strict), templates=CHAT_TEMPLATES,
              preprocess=chat.ChatFields(chat_format), metric="rouge_l", cluster="chat")


PREFERENCE_TEMPLATES = (templates_lib.Template(id=0, inputs="{prompt}"),)  # the prompt as rendered, whole


def preference_task(name: str, files: str | Mapping[str, str] | sources.Source, *, strict: bool = True,
                    chat_format: chat.ChatFormat | None = None) -> Task:
  """A file of preference pairs (or {split: file}, or "train=A,test=B", or a source of such records) as a task of
  cluster "preferences": the chosen response is the answer (ROUGE-L), the rejected one rides along
  (`preferences.PreferenceFields`)."""
  return Task(name=name, source=_source(files, preferences.PreferenceSource, strict),
              templates=PREFERENCE_TEMPLATES, preprocess=preferences.PreferenceFields(chat_format), metric="rouge_l",
              cluster="preferences")


def hf_dataset_task(name: str, spec: str, *, strict: bool = True, chat_format: chat.ChatFormat | None = None) -> Task:
  """A Hugging Face dataset (`config.data_paths.hf_datasets.NAME=SPEC`, `hf_datasets.py`) as the instruction, chat
  or preference task its columns make it, built as `instruction_task`, `chat_task` or `preference_task` builds one
  from a file; lenient (strict=False), a row that cannot be read is dropped (`hf_datasets.DropBadRows`)."""
  source = hf_datasets_lib.HFDatasetSource(name, spec, strict=strict)
  make = {"instructions": instruction_task, "chat": chat_task, "preferences": preference_task}[source.kind]
  task = make(name, source, strict=strict, chat_format=chat_format)
  return task if strict else dataclasses.replace(task, preprocess=hf_datasets_lib.DropBadRows(task.preprocess))


def per_turn(task: Task) -> Task:
  """An encoder-decoder's view of a chat task: one example per assistant turn (other tasks as they are)."""
  if isinstance(task.source, (chat.ChatSource, hf_datasets_lib.HFDatasetSource)) and not task.source.per_turn:
    return dataclasses.replace(task, source=task.source.turns_view())
  return task
