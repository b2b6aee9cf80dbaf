"""TFDS data for the Flan 2021 catalogue without downloading anything.

Two kinds, as the builders allow:

* builders whose features load without TensorFlow: `tfds.testing.mock_data` (USE_CODE) draws random examples
  from the builder's own feature declaration (`MODULES` are imported so TFDS knows the legacy builders);
* super_glue, whose builder needs TensorFlow to declare its features: `SuperGlueStandIn` writes a tiny prepared
  array_record dataset per config, with the features TFDS's catalog (and super_glue.py) documents, read with the
  real `tfds.data_source`.

`mocked(data_dir)` is a context in which every catalogue task loads: super_glue from the prepared files under
`data_dir`, everything else from the mocked builders.
"""
import contextlib
import importlib
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered
from tensorflow_datasets.testing import mocking

MODULES = ("text.glue", "text.drop.drop", "text.hellaswag", "text.definite_pronoun_resolution", "text.winogrande",
           "text.wsc273.wsc273", "structured.dart.dart", "structured.web_nlg.web_nlg", "summarization.cnn_dailymail",
           "summarization.gigaword", "summarization.xsum", "translate.wmt14", "translate.wmt16", "text.gsm8k.gsm8k",
           "text.esnli", "text.yelp_polarity")
MOCK_EXAMPLES = 8  # records per split of a mocked builder
MOCK_MAX_VALUE = 5  # integer features of mocked builders are drawn from [0, 5) (labels stored as plain ints)

for _m in MODULES:
  importlib.import_module(f"tensorflow_datasets.{_m}")

_T = tfds.features.Text


def _super_glue_features(config: str) -> dict:
  """super_glue's features per config (TFDS catalog: super_glue/<config>)."""
  yes_no = tfds.features.ClassLabel(names=["False", "True"])
  return {
      "boolq": {"question": _T(), "passage": _T(), "idx": np.int32, "label": yes_no},
      "cb": {"premise": _T(), "hypothesis": _T(), "idx": np.int32,
             "label": tfds.features.ClassLabel(names=["entailment", "contradiction", "neutral"])},
      "copa": {"premise": _T(), "choice1": _T(), "choice2": _T(), "question": _T(), "idx": np.int32,
               "label": tfds.features.ClassLabel(names=["choice1", "choice2"])},
      "multirc": {"paragraph": _T(), "question": _T(), "answer": _T(),
                  "idx": {"paragraph": np.int32, "question": np.int32, "answer": np.int32}, "label": yes_no},
      "record": {"passage": _T(), "query": _T(), "entities": tfds.features.Sequence(_T()),
                 "answers": tfds.features.Sequence(_T()), "idx": {"passage": np.int32, "query": np.int32}},
      "wic": {"word": _T(), "sentence1": _T(), "sentence2": _T(), "start1": np.int32, "start2": np.int32,
              "end1": np.int32, "end2": np.int32, "idx": np.int32, "label": yes_no},
  }[config]


def _super_glue_record(config: str, i: int, labelled: bool) -> dict:
  words = ["cat", "dog", "river", "lamp", "city", "song"]
  w = words[i % len(words)]
  label = (i % 2) if labelled else -1
  text = f"The {w} number {i} stood near the old house."
  if config == "boolq":
    return {"question": f"is the {w} near the house", "passage": text, "idx": i, "label": label}
  if config == "cb":
    return {"premise": text, "hypothesis": f"A {w} exists.", "idx": i, "label": (i % 3) if labelled else -1}
  if config == "copa":
    return {"premise": text, "choice1": "It rained.", "choice2": "It was sunny.",
            "question": ("cause", "effect")[i % 2], "idx": i, "label": label}
  if config == "multirc":
    return {"paragraph": text, "question": f"Where was the {w}?", "answer": "near the house",
            "idx": {"paragraph": i, "question": i, "answer": i}, "label": label}
  if config == "record":
    return {"passage": f"{text}\n@highlight\nThe {w} was seen by Anna.", "query": "@placeholder saw the animal.",
            "entities": ["Anna", "Bob"], "answers": ["Anna"] if labelled else [], "idx": {"passage": i, "query": i}}
  return {"word": w, "sentence1": text, "sentence2": f"Another {w} ran.", "start1": 4, "start2": 8, "end1": 7,
          "end2": 11, "idx": i, "label": label}


SUPER_GLUE_CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "wic")


class SuperGlueStandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A few rows per split of each super_glue config, with super_glue's features (test rows unlabelled, as TFDS's)."""
  name = "super_glue"
  VERSION = tfds.core.Version("1.0.3")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=c) for c in SUPER_GLUE_CONFIGS]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self,
                                 features=tfds.features.FeaturesDict(_super_glue_features(self.builder_config.name)))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(8, True), "validation": self._generate_examples(6, True),
            "test": self._generate_examples(4, False)}

  def _generate_examples(self, n, labelled):
    for i in range(n):
      yield i, _super_glue_record(self.builder_config.name, i, labelled)


def prepare_super_glue(data_dir: str) -> None:
  for config in SUPER_GLUE_CONFIGS:
    SuperGlueStandIn(config=config, data_dir=data_dir, file_format="array_record").download_and_prepare()


@contextlib.contextmanager
def without_super_glue_code():
  """TFDS without super_glue's builder code (the `text` imports above register it), so `tfds.data_source` reads
  the prepared stand-in from files, as it does in a process that never imports tensorflow_datasets.text."""
  with mock.patch.dict(registered._DATASET_REGISTRY):  # pylint: disable=protected-access
    registered._DATASET_REGISTRY.pop("super_glue", None)  # pylint: disable=protected-access
    yield


@contextlib.contextmanager
def mocked(data_dir: str, num_examples: int = MOCK_EXAMPLES):
  """Every Flan task loadable: super_glue from `data_dir` (prepared with `prepare_super_glue`), the rest mocked."""
  real = tfds.core.DatasetBuilder.as_data_source
  with without_super_glue_code(), tfds.testing.mock_data(num_examples=num_examples,
                                                         policy=tfds.testing.MockPolicy.AUTO, data_dir=data_dir):
    fake = tfds.core.DatasetBuilder.as_data_source

    def as_data_source(self, *args, **kwargs):  # the prepared stand-in is read for real, the rest is mocked
      return (real if self.name == "super_glue" else fake)(self, *args, **kwargs)

    init = mocking.RandomFakeGenerator.__init__

    def small_ints(self, features, num_examples, *args, **kwargs):  # as_data_source's mock passes no max_value
      init(self, features, num_examples, *args, **{**kwargs, "max_value": kwargs.get("max_value") or MOCK_MAX_VALUE})

    with mock.patch.object(tfds.core.DatasetBuilder, "as_data_source", as_data_source), \
         mock.patch.object(mocking.RandomFakeGenerator, "__init__", small_ints):
      yield
