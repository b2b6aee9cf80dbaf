"""Hugging Face datasets as task sources, read offline and lazily, beside the JSONL files.

Each `config.data_paths.hf_datasets.NAME=SPEC` is a task. SPEC is a path and options, or files per split:

    SPEC    := PATH ("," OPTION)*  |  SPLIT=FILE ("," SPLIT=FILE)* ("," OPTION)*
    PATH    := a directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`,
               or a .parquet, .json, .jsonl or .arrow file
    OPTION  := split=S                        the dataset's split S is the task's train split
             | splits=OURS:THEIRS(+OURS:THEIRS)*   e.g. splits=train:train_sft+test:test_sft
             | columns=COLUMN:FIELD(+COLUMN:FIELD)*  e.g. columns=prompt:instruction+response:output
                                              (FIELD "-" leaves the column out)
             | kind=instructions|chat|preferences  the layout, where the columns fit more than one

Any other KEY=VALUE names the file (or saved single-dataset directory) of split KEY; with such files only `columns`
and `kind` apply (paths may not hold commas). A saved DatasetDict's splits are the task's splits unless `split` or
`splits` maps them; a single dataset, or a file, is the train split. A path
that does not exist and reads like a Hub id (`org/name`) is an error saying how to download it first: instruct_jax
never touches the network (HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set, when unset, before `datasets` is first
imported, and the readers used here are local ones).

The (mapped) column names give the layout, each read as the file tasks read theirs, into the same records:

    instructions  instruction + output (or Self-Instruct `instances`: [{input, output}]) [+ input, system]
                  -> {instruction, input, output, system} as `sources.InstructionSource` (one per instance)
    chat          messages (OpenAI) or conversations (ShareGPT) -> {messages, turn} as `chat.ChatSource`
    preferences   chosen + rejected [+ prompt, system] -> `preferences.parse_preference`'s records

Other columns (ids, metadata) are left out, except that an instruction layout refuses a column that reads like an
input (`sources.INPUT_LIKE_FIELDS`: context, question, prompt, ..., as the instruction files do; not Alpaca's `text`,
its rendered example): map it (`columns=context:input`) or leave it out (`columns=context:-`).

Reading is lazy: `datasets.load_from_disk` and `Dataset.from_file` memory-map the arrow files; parquet and JSON
files are converted once into datasets' own arrow cache (`from_parquet`, `from_json`). `load(split)` is a
`Sequence` view that makes record i from row `ds[j]` when it is read. What a view needs up front it computes with
pyarrow on the columns, never row by row in Python: the rows kept (an instruction whose output is empty or null is
skipped and counted in `stats.empty_outputs`, as `InstructionSource` does), each Self-Instruct instance's
(row, instance) and, for an encoder-decoder's one-example-per-assistant-turn view (`turns_view`), each assistant
turn's (row, turn). Views pickle with their dataset, which pickles by reference to its arrow files.

Errors name the config key, or the row: `DIR split S row N` (`FILE (split S) row N` for a single dataset or a file;
N is the dataset's row index, `ds[N]`) and the field. A spec, a column map or a layout that cannot be used fails when
the task is built (`HFDatasetSource`), with the dataset's columns listed. Column types are checked when a split is
loaded: arrow columns are typed, so a wrong type is wrong for the whole column, and the error names the first row
holding a value; so are a null instruction and an empty `instances` list, in either mode, as `InstructionSource`
refuses such records. A row that is no usable record (a conversation that does not open with a user turn, an empty
content, a pair whose response is empty) is found when it is read: strict, it raises; lenient (`strict=False`), it
is read as None, counted once in `stats.bad_records`, and dropped by the task's preprocessor (`DropBadRows`), as a
preprocessor drops an unlabelled row (a lazy view cannot skip it up front without reading every row).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from instruct_jax.data import chat as chat_lib
from instruct_jax.data import preferences
from instruct_jax.data import sources

KEY = "config.data_paths.hf_datasets"
OPTIONS = ("split", "splits", "columns", "kind")
SUFFIXES = (".parquet", ".json", ".jsonl", ".arrow")
DROP = "-"  # columns=COLUMN:- leaves COLUMN out
FIELDS = {  # layout (the task's cluster) -> the fields it reads
    "instructions": ("instruction", "input", "output", "system", "instances"),
    "chat": ("messages", "conversations"),
    "preferences": ("prompt", "chosen", "rejected", "system"),
}
LAYOUTS = ("instructions: instruction + output (or Self-Instruct instances) [+ input, system]; "
           "chat: messages (OpenAI) or conversations (ShareGPT); preferences: chosen + rejected [+ prompt, system]")
ALIASES = {"output": ("response", "completion", "answer", "outputs", "target"),  # for the hint of an unusable layout
           "instruction": ("prompt", "question", "query"), "input": ("context", "inputs", "passage")}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _datasets():
  """The `datasets` module, imported offline; a one-line DataError if it is not installed."""
  os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  try:
    import datasets  # pylint: disable=g-import-not-at-top  (optional extra: only when a dataset is configured)
  except ImportError:
    raise sources.DataError(f'{KEY} needs the Hugging Face datasets package: pip install -e ".[hf]"') from None
  return datasets


# --- The spec --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Spec:
  """A parsed `config.data_paths.hf_datasets.NAME` value (see the module docstring)."""
  name: str
  path: str | None = None  # a saved dataset directory or a file
  files: Mapping[str, str] = dataclasses.field(default_factory=dict)  # our split -> file (the per-split form)
  split: str | None = None
  splits: Mapping[str, str] = dataclasses.field(default_factory=dict)  # our split -> the dataset's
  columns: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the dataset's column -> our field or DROP
  kind: str | None = None

  @property
  def key(self) -> str:
    return f"{KEY}.{self.name}"


def _pairs(key: str, option: str, text: str) -> dict[str, str]:
  """"A:B+C:D" -> {A: B, C: D}; DataError naming the key and option otherwise."""
  out = {}
  for item in text.split("+"):
    a, sep, b = item.strip().rpartition(":")
    if not sep or not a.strip() or not b.strip():
      raise sources.DataError(f"{key}: {option}={text}: expected {option}=A:B(+A:B)*, e.g. "
                              + ("splits=train:train_sft+test:test_sft" if option == "splits" else
                                 "columns=prompt:instruction+response:output"))
    if a.strip() in out:
      raise sources.DataError(f"{key}: {option}={text}: {a.strip()!r} is named twice")
    out[a.strip()] = b.strip()
  return out


def _check_path(key: str, path: str, value: str) -> None:
  if os.path.isdir(path):
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")):
      raise sources.DataError(f"{key}={value}: {path} is a directory, but not one written by Dataset.save_to_disk or "
                              "DatasetDict.save_to_disk (it has neither dataset_dict.json nor state.json)")
    return
  if os.path.isfile(path):
    if not path.endswith(SUFFIXES):
      raise sources.DataError(f"{key}={value}: {path}: a dataset file ends with one of {', '.join(SUFFIXES)}")
    return
  if HUB_ID.fullmatch(path):
    raise sources.DataError(
        f"{key}={value}: {path!r} is not a file or directory here, and reads like a Hugging Face Hub dataset id; "
        "instruct_jax reads datasets offline only. Download it first on a machine with internet: python -c \"import "
        f"datasets; datasets.load_dataset('{path}').save_to_disk('DIR')\", then pass {key}=DIR")
  raise sources.DataError(f"{key}={value}: {path}: no such file or directory")


def parse_spec(name: str, value: str | os.PathLike) -> Spec:
  """The Spec of `config.data_paths.hf_datasets.NAME=value`; DataError naming the key if it is malformed."""
  key = f"{KEY}.{name}"
  text = os.fspath(value).strip() if isinstance(value, (str, os.PathLike)) else None
  if not text:
    raise sources.DataError(f"{key}: expected a dataset directory or file (with options after commas), got {value!r}")
  parts = [p.strip() for p in text.split(",")]
  path, files, options = None, {}, {}
  for i, part in enumerate(parts):
    k, sep, v = part.partition("=")
    k, v = k.strip(), v.strip()
    if not sep:
      if i:
        raise sources.DataError(f"{key}={text}: {part!r} is not KEY=VALUE (only the first item may be a path)")
      path = part
    elif not k or not v:
      raise sources.DataError(f"{key}={text}: {part!r}: expected KEY=VALUE")
    elif k in options or k in files:
      raise sources.DataError(f"{key}={text}: {k!r} is given twice")
    elif k in OPTIONS:
      options[k] = v
    elif os.path.isfile(v) or os.path.isdir(v):
      _check_path(key, v, text)
      files[k] = v
    else:
      close = difflib.get_close_matches(k, OPTIONS, n=1, cutoff=0.6)
      hint = f" (did you mean {close[0]}=?)" if close else ""
      raise sources.DataError(f"{key}={text}: {k}={v}: {k!r} is not an option ({', '.join(OPTIONS)}){hint}, so it "
                              f"names the file of split {k!r}, and {v} is not a file or directory")
  if path is not None and files:
    raise sources.DataError(f"{key}={text}: give a path or files per split (SPLIT=FILE), not both")
  if path is None and not files:
    raise sources.DataError(f"{key}={text}: no dataset: give a directory or file, or SPLIT=FILE items")
  if "split" in options and "splits" in options:
    raise sources.DataError(f"{key}={text}: give split= or splits=, not both")
  if files and ("split" in options or "splits" in options):
    raise sources.DataError(f"{key}={text}: split= and splits= choose among a saved DatasetDict's splits; with files "
                            "per split (SPLIT=FILE) each file is its split")
  kind = options.get("kind")
  if kind is not None and kind not in FIELDS:
    raise sources.DataError(f"{key}={text}: kind={kind}: expected one of {', '.join(FIELDS)}")
  spec = Spec(name=name, path=path, files=files, split=options.get("split"),
              splits=_pairs(key, "splits", options["splits"]) if "splits" in options else {},
              columns=_pairs(key, "columns", options["columns"]) if "columns" in options else {}, kind=kind)
  if path is not None:
    _check_path(key, path, text)
  return spec


# --- Opening ---------------------------------------------------------------------------------------------


def _read(spec: Spec, path: str):
  """One datasets.Dataset from a saved directory or a file, memory-mapped (files: through datasets' arrow cache)."""
  datasets = _datasets()
  try:
    if os.path.isdir(path):
      ds = datasets.load_from_disk(path)
    elif path.endswith(".parquet"):
      ds = datasets.Dataset.from_parquet(path)
    elif path.endswith(".arrow"):
      ds = datasets.Dataset.from_file(path)
    else:
      ds = datasets.Dataset.from_json(path)
  except Exception as e:  # datasets and pyarrow raise many types for a file they cannot read
    raise sources.DataError(f"{spec.key}: {path} could not be read as a dataset: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  return ds


def open_splits(spec: Spec) -> dict[str, tuple[str, Any]]:
  """{our split: (where, datasets.Dataset)} of a spec, `where` naming the file and the dataset's split."""
  if spec.files:
    out = {}
    for split, path in spec.files.items():
      ds = _read(spec, path)
      if isinstance(ds, Mapping):
        raise sources.DataError(f"{spec.key}: {split}={path} is a saved DatasetDict; name one of its splits' "
                                "directories, or pass the directory itself (with split= or splits=)")
      out[split] = (f"{path} (split {split})", ds)
    return out
  ds = _read(spec, spec.path)
  if not isinstance(ds, Mapping):  # one dataset: the train split
    if spec.split or spec.splits:
      raise sources.DataError(f"{spec.key}: {spec.path} holds one dataset, not a DatasetDict: it has no splits to "
                              "choose from (it is the task's train split); drop split= / splits=")
    return {"train": (f"{spec.path} (split train)", ds)}
  mapping = dict(spec.splits) or ({"train": spec.split} if spec.split else {s: s for s in ds})
  for ours, theirs in mapping.items():
    if theirs not in ds:
      raise sources.DataError(f"{spec.key}: {spec.path} has no split {theirs!r} (for the task's {ours!r} split); its "
                              f"splits: {', '.join(ds)}")
  return {ours: (f"{spec.path} split {theirs}", ds[theirs]) for ours, theirs in mapping.items()}


def _map_columns(spec: Spec, where: str, ds):
  """The dataset with `spec.columns` applied: columns renamed onto our fields, those mapped to DROP removed."""
  columns = list(ds.column_names)
  known = sorted({f for fields in FIELDS.values() for f in fields})
  for column, field in spec.columns.items():
    listing = f"{where} has columns {', '.join(columns)}"
    if column not in columns:
      raise sources.DataError(f"{spec.key}: columns={column}:{field}: no column {column!r}; {listing}")
    if field != DROP and field not in known:
      raise sources.DataError(f"{spec.key}: columns={column}:{field}: {field!r} is not a field instruct_jax reads "
                              f"(fields: {', '.join(known)}; {DROP} leaves a column out); {listing}")
    if field != DROP and field in columns and field not in spec.columns:
      raise sources.DataError(f"{spec.key}: columns={column}:{field}: {where} already has a column {field!r}; map "
                              f"that one too (e.g. {field}:{DROP} to leave it out)")
  targets = [f for f in spec.columns.values() if f != DROP]
  twice = sorted({f for f in targets if targets.count(f) > 1})
  if twice:
    raise sources.DataError(f"{spec.key}: columns= maps several columns onto {', '.join(twice)}")
  ds = ds.remove_columns([c for c, f in spec.columns.items() if f == DROP])
  return ds.rename_columns({c: f for c, f in spec.columns.items() if f != DROP})


def _hint(present: set[str]) -> str:
  guesses = [f"{alias}:{field}" for field, aliases in ALIASES.items() if field not in present
             for alias in aliases if alias in present][:3]
  return f" (e.g. columns={'+'.join(guesses)})" if guesses else ""


def layout(spec: Spec, where: str, columns: Sequence[str], dataset_columns: Sequence[str] | None = None) -> str:
  """The layout ("instructions", "chat" or "preferences") that the mapped `columns` fit; DataError otherwise, listing
  the dataset's own columns (`dataset_columns`, before the map)."""
  present = set(columns)
  fits = {"instructions": "instruction" in present and bool({"output", "instances"} & present),
          "chat": bool({"messages", "conversations"} & present),
          "preferences": {"chosen", "rejected"} <= present}
  listing = f"{where} has columns {', '.join(dataset_columns or columns)}"
  if spec.kind is not None:
    if not fits[spec.kind]:
      raise sources.DataError(f"{spec.key}: kind={spec.kind}, but the columns do not fit it; {listing}; the layouts: "
                              f"{LAYOUTS}")
    kind = spec.kind
  else:
    matches = [k for k, ok in fits.items() if ok]
    if len(matches) != 1:
      what = (f"fit several layouts ({', '.join(matches)}): choose one with kind=" if matches else
              f"fit no layout: map them onto our fields with columns=COLUMN:FIELD{_hint(present)}")
      raise sources.DataError(f"{spec.key}: the columns {what}; {listing}; the layouts: {LAYOUTS}")
    kind = matches[0]
  if kind == "chat" and {"messages", "conversations"} <= present:
    raise sources.DataError(f"{spec.key}: both 'messages' and 'conversations'; leave one out (columns=conversations:"
                            f"{DROP}); {listing}")
  if kind == "instructions" and {"input", "instances"} <= present:
    raise sources.DataError(f"{spec.key}: both 'input' and 'instances' (a Self-Instruct record gives each instance's "
                            f"input in 'instances'); leave one out (columns=input:{DROP}); {listing}")
  unmapped = [c for c in columns if c in sources.INPUT_LIKE_FIELDS] if kind == "instructions" else []
  if unmapped:
    c = unmapped[0]
    how = (f"map it (columns={c}:input) or leave it out (columns={c}:{DROP})" if "input" not in present else
           f"leave it out (columns={c}:{DROP}), or map it onto input (columns={c}:input+input:{DROP})")
    raise sources.DataError(f"{spec.key}: column {c!r} looks like the examples' input, and instruction records read "
                            f"theirs from 'input' (or Self-Instruct's 'instances'): {how}; {listing}")
  return kind


# --- Column checks and indices (pyarrow, no Python loop over rows) ---------------------------------------


def _column(ds, name: str):
  """Column `name` as a pyarrow ChunkedArray (memory-mapped, in the dataset's row order)."""
  return ds.with_format("arrow")[name]


def _is_text(t) -> bool:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t) or (
      hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def _struct_list(t, required: Sequence[str], optional: Sequence[str] = (), *, only: bool = False,
                 nulls: bool = True) -> bool:
  """A list of structs whose `required` fields (and `optional` ones, where present) are text; with `only`, no other
  fields; with `nulls`, a column of nulls only (each row then fails as a record of its own)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  if pa.types.is_null(t):
    return nulls
  if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
    return False
  item = t.value_type
  names = [item.field(i).name for i in range(item.num_fields)]
  return (all(f in names and _is_text(item.field(f).type) for f in required)
          and all(_is_text(item.field(f).type) for f in optional if f in names)
          and not (only and set(names) - {*required, *optional}))


MESSAGES = "a list of {role, content} messages"
TYPES = {  # field -> (the check of its arrow type, what it should hold)
    "instruction": (_is_text, "a string"), "input": (_is_text, "a string"), "output": (_is_text, "a string"),
    "system": (_is_text, "a string"),
    "instances": (lambda t: _struct_list(t, ("output",), ("input",), only=True, nulls=False),
                  "a non-empty list of {input, output} strings (no other fields)"),
    "messages": (lambda t: _struct_list(t, ("role", "content")), MESSAGES),
    "conversations": (lambda t: _struct_list(t, ("from", "value")), "a list of {from, value} messages"),
    "prompt": (lambda t: _is_text(t) or _struct_list(t, ("role", "content")), f"a string or {MESSAGES}"),
    "chosen": (lambda t: _is_text(t) or _struct_list(t, ("role", "content")), f"a string or {MESSAGES}"),
    "rejected": (lambda t: _is_text(t) or _struct_list(t, ("role", "content")), f"a string or {MESSAGES}"),
}


def _first_valid(ds, name: str) -> int:
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
  return max(int(pc.index(pc.is_valid(_column(ds, name)), True).as_py()), 0)


def _check_types(spec: Spec, where: str, ds, fields: Sequence[str]) -> None:
  schema = ds.features.arrow_schema
  renamed = {f: c for c, f in spec.columns.items()}
  for field in fields:
    check, expected = TYPES[field]
    t = schema.field(field).type
    if not check(t):
      column = f" (column {renamed[field]!r})" if field in renamed else ""
      raise sources.DataError(f"{where} row {_first_valid(ds, field)} field {field!r}{column}: must be {expected}, "
                              f"but the dataset's column holds {t} ({spec.key})")


def _nonempty(values) -> np.ndarray:
  """Boolean mask of the text values that are not null and not only whitespace."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
  if pa.types.is_null(values.type):
    return np.zeros(len(values), bool)
  ok = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0), False)
  return np.asarray(ok.to_numpy(zero_copy_only=False), bool)


def _items(ds, name: str, field: str | None = None):
  """(row of each item, position of the item in its row, the items' `field` values or None) of a list column."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
  column = _column(ds, name)
  if pa.types.is_null(column.type):  # every row null: no items
    empty = np.zeros(0, np.int64)
    return empty, empty, (pa.array([], pa.string()) if field is not None else None)
  lengths = np.asarray(pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False), np.int64)
  rows = np.asarray(pc.list_parent_indices(column).to_numpy(zero_copy_only=False), np.int64)
  starts = np.cumsum(lengths) - lengths
  positions = np.arange(len(rows), dtype=np.int64) - starts[rows]
  values = pc.struct_field(pc.list_flatten(column), field) if field is not None else None
  return rows, positions, values


# --- The source ------------------------------------------------------------------------------------------


class _Records(Sequence):
  """Records of one split, each made from its row when read (see the module docstring).

  `rows[i]` is the dataset row of record i and `items[i]` (when given) the instance or assistant turn within it.
  """

  def __init__(self, ds, where: str, kind: str, rows: np.ndarray, items: np.ndarray | None, *, strict: bool,
               stats: sources.ReadStats, note: str):
    self._ds, self._where, self._kind, self._rows, self._items = ds, where, kind, rows, items
    self._strict, self._stats, self._note = strict, stats, note
    self._bad: set[int] = set()

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = range(len(self))[i]  # IndexError past the end (the Sequence protocol's stop), negative indices counted back
    row = int(self._rows[i])
    item = None if self._items is None else int(self._items[i])
    where = f"{self._where} row {row}"
    try:
      return self._record(self._ds[row], where, item)
    except sources.DataError as e:
      message = f"{e}{self._note}"
      if self._strict:
        raise type(e)(message) from None
      if row not in self._bad:
        self._bad.add(row)
        self._stats.skip("bad_records", message)
      return None

  def _record(self, row: dict[str, Any], where: str, item: int | None) -> dict[str, Any]:
    if self._kind == "instructions":
      records = sources.normalise_instruction_record(row, where)
      return records[item or 0]
    if self._kind == "preferences":
      return preferences.parse_preference(row, where)
    messages = chat_lib.parse_conversation(row, where)
    turns = chat_lib.assistant_turns(messages)
    if item is not None and item >= len(turns):
      raise chat_lib.ChatError(f"{where}: no assistant turn {item}")
    return {"messages": messages, "turn": turns[-1] if item is None else turns[item]}


class HFDatasetSource:
  """A Hugging Face dataset (one `config.data_paths.hf_datasets` entry) as a source of the records its layout's file
  source gives (`kind`: "instructions", "chat" or "preferences"; see the module docstring).

  Construction opens every split (memory-mapped) and checks the columns; `load(split)` checks the types and builds
  the split's view. `stats` counts what was skipped; `per_turn` views (chat) give one record per assistant turn.
  """

  def __init__(self, name: str, spec: str | os.PathLike | Spec, *, strict: bool = True):
    self.spec = spec if isinstance(spec, Spec) else parse_spec(name, spec)
    self.strict, self.per_turn = strict, False
    self.stats = sources.ReadStats()
    opened = open_splits(self.spec)
    self._datasets: dict[str, tuple[str, Any]] = {}
    kinds = {}
    for split, (where, ds) in opened.items():
      mapped = _map_columns(self.spec, where, ds)
      kinds[split] = layout(self.spec, where, mapped.column_names, ds.column_names)
      read = [c for c in mapped.column_names if c in FIELDS[kinds[split]]]  # rows decode only the fields read
      self._datasets[split] = (where, mapped.select_columns(read))
    if len(set(kinds.values())) > 1:
      raise sources.DataError(f"{self.spec.key}: the splits hold different layouts ({kinds}); give them the same "
                              "columns")
    self.kind = next(iter(kinds.values()))
    self._views: dict[str, _Records] = {}

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self._datasets)

  def turns_view(self) -> "HFDatasetSource":
    """The same dataset, one record per assistant turn (the encoder-decoder view of chat; sharing `stats`)."""
    view = copy.copy(self)
    view.per_turn, view._views = True, {}  # pylint: disable=protected-access
    return view

  def load(self, split: str) -> Sequence[dict[str, Any] | None]:
    if split not in self._datasets:
      raise sources.DataError(f"{self.spec.key}: no split {split!r}; the task has {', '.join(self._datasets)}")
    if split not in self._views:
      self._views[split] = self._view(split)
    return self._views[split]

  def _view(self, split: str) -> _Records:
    where, ds = self._datasets[split]
    _check_types(self.spec, where, ds, ds.column_names)
    if not len(ds):
      raise sources.DataError(f"{where}: no rows; nothing to train or evaluate on ({self.spec.key})")
    self.stats.records += len(ds)
    rows, items = np.arange(len(ds), dtype=np.int64), None
    if self.kind == "instructions":
      rows, items = self._instruction_index(where, ds)
    elif self.kind == "chat" and self.per_turn:
      rows, items = self._turn_index(ds)
    renamed = [f"{c}->{f}" for c, f in self.spec.columns.items() if f != DROP]
    note = f" (fields are after {self.spec.key}'s columns={'+'.join(renamed)})" if renamed else ""
    return _Records(ds, where, self.kind, rows, items, strict=self.strict, stats=self.stats, note=note)

  def _instruction_index(self, where: str, ds) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows (and instances) with an output, the others counted in `stats.empty_outputs`."""
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
    missing = pc.is_null(_column(ds, "instruction"))
    if pc.any(missing).as_py():
      row = int(pc.index(missing, True).as_py())
      raise sources.DataError(f"{where} row {row}: missing field 'instruction' ({self.spec.key})")
    if "instances" in ds.column_names:
      none = pc.fill_null(pc.equal(pc.list_value_length(_column(ds, "instances")), 0), True)
      if pc.any(none).as_py():
        raise sources.DataError(f"{where} row {int(pc.index(none, True).as_py())}: field 'instances' must be a "
                                f"non-empty list of {{input, output}} objects ({self.spec.key})")
      rows, items, outputs = _items(ds, "instances", "output")
      ok = _nonempty(outputs)
      label = [f"{where} row {r} instance {j}" for r, j in zip(rows[~ok][:20], items[~ok][:20])]
      rows, items = rows[ok], items[ok]
    else:
      ok = _nonempty(_column(ds, "output"))
      label = [f"{where} row {r}" for r in np.flatnonzero(~ok)[:20]]
      rows, items = np.flatnonzero(ok).astype(np.int64), None
    empty = int((~ok).sum())
    self.stats.empty_outputs += empty
    self.stats.problems.extend(f"{x}: empty output" for x in label[:max(0, 20 - len(self.stats.problems))])
    if not len(rows):
      detail = f"every record's output is empty ({empty}, the first at {label[0]})" if empty else "no records"
      raise sources.DataError(f"{where}: {detail}; nothing to train or evaluate on ({self.spec.key})")
    return rows, items

  def _turn_index(self, ds) -> tuple[np.ndarray, np.ndarray]:
    """(row, k) of every assistant turn: record i is the k-th assistant turn of its row."""
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.compute as pc  # pylint: disable=g-import-not-at-top
    if "messages" in ds.column_names:
      name, role_key, assistant = "messages", "role", ["assistant"]
    else:
      name, role_key = "conversations", "from"
      assistant = [k for k, v in chat_lib.SHAREGPT_ROLES.items() if v == "assistant"]
    rows, _, roles = _items(ds, name, role_key)
    mask = np.asarray(pc.fill_null(pc.is_in(roles, value_set=pa.array(assistant)), False)
                      .to_numpy(zero_copy_only=False), bool)
    rows = rows[mask]
    first = np.searchsorted(rows, rows, side="left")  # rows are in order: the row's first assistant turn
    return rows, np.arange(len(rows), dtype=np.int64) - first


@dataclasses.dataclass(frozen=True)
class DropBadRows:
  """A lenient task's preprocessor: a row its source could not read (None) is dropped, the others go to `inner`."""
  inner: Callable[[dict[str, Any]], dict[str, Any] | None]

  @property
  def fmt(self) -> chat_lib.ChatFormat | None:  # the chat format the pipeline checks (`pipeline.check_end_of_turn`)
    return getattr(self.inner, "fmt", None)

  def __call__(self, record: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if record is None else self.inner(record)
