"""The Flan 2021 catalogue: the Flan datasets that TFDS has builders for, in Flan's task clusters.

A plain table (`SPECS`: TFDS name, cluster, template list, preprocessor, metric, options, split renames);
`tasks(data_dir)` turns it into `Task`s read with `tfds.data_source` from `data_dir` (array_record, no
TensorFlow), and `mixtures()` gives `flan2021` (Flan 2021's twelve clusters, examples-proportional with Flan's
3,000 examples-per-task cap), `flan2021_<cluster>` and the leave-one-cluster-out `flan2021_no_<cluster>`.
Nothing registers itself on import. Templates: templates/flan2021.yaml (about 10 per task, written for this
project; datasets of one shape share a list, as the translation pairs and ANLI rounds did in Flan).

Every task has the canonical splits "train" and "test"; "test" is the labelled held-out split (GLUE and
SuperGLUE: "validation", whose test labels are hidden). Classification and multiple-choice tasks carry
answer options and the metric "rank_accuracy" (held-out evaluation ranks the options by log-likelihood, as
Flan did); the others are scored by exact match (short answers) or ROUGE-L (long outputs).

Clusters (Flan 2021's twelve, plus "cot", Flan 2022's chain-of-thought sets that TFDS has; flan2021 leaves cot out):

    nli                      anli/r1-r3, super_glue/cb, glue/mnli, glue/qnli, glue/rte, snli, glue/wnli
    reading_comprehension    super_glue/boolq, drop, super_glue/multirc, openbookqa, squad/v1.1, squad/v2.0
    reading_comprehension_commonsense  cosmos_qa, super_glue/record
    closed_book_qa           ai2_arc/ARC-Easy, ai2_arc/ARC-Challenge, natural_questions_open, trivia_qa/rc.nocontext
    commonsense              super_glue/copa, hellaswag, piqa, story_cloze/2016
    coreference              definite_pronoun_resolution, winogrande, wsc273
    paraphrase               glue/mrpc, glue/qqp, paws_wiki, glue/stsb
    sentiment                imdb_reviews, sentiment140, glue/sst2, yelp_polarity_reviews
    struct_to_text           gem/common_gen, dart, e2e_cleaned, web_nlg
    summarization            aeslc, ag_news_subset, cnn_dailymail, gigaword, multi_news, newsroom,
                             opinion_abstracts/idebate, opinion_abstracts/rotten_tomatoes, samsum,
                             gem/wiki_lingua_english_en, xsum
    translation              para_crawl/ende, para_crawl/enes, para_crawl/enfr, wmt14_translate/fr-en,
                             wmt16_translate/{cs,de,fi,ro,ru,tr}-en
    misc                     coqa, quac, trec, glue/cola, super_glue/wic, math_dataset/algebra__linear_1d
    cot                      gsm8k, esnli

Left out, having no TFDS builder: "fix punctuation" (Flan made it from a text corpus) and Flan 2022's other
CoT sets (AQuA, CREAK, ECQA, QED, Sensemaking, StrategyQA). Every other dataset of Flan 2021's list has a
builder here (GEM's builders for CommonGen and WikiLingua). Uncertain choices, said rather than guessed:
DeepMind math is read as its algebra__linear_1d module (Flan's exact modules are not in this project's
references); TriviaQA uses the rc.nocontext config (closed book). Builders with one split reuse it: wsc273
(test only), opinion_abstracts and para_crawl (train only), so their "test" is their training data;
story_cloze trains on its validation split. Several builders need a manual download (samsum, newsroom,
story_cloze, parts of wmt14/16; `tfds build` says how). Flan also held related clusters out together when
evaluating one; which ones it paired is not recorded in this project's references, so `held_out(cluster)`
removes only the named cluster.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from instruct_jax.data import sources
from instruct_jax.data import tasks as tasks_lib
from instruct_jax.data import templates as templates_lib

FLAN2021_CLUSTERS = ("nli", "reading_comprehension", "reading_comprehension_commonsense", "closed_book_qa",
                     "commonsense", "coreference", "paraphrase", "sentiment", "struct_to_text", "summarization",
                     "translation", "misc")
CLUSTERS = (*FLAN2021_CLUSTERS, "cot")  # "cot": Flan 2022's chain-of-thought sets (not part of mixture flan2021)
MIXING_CAP = 3000  # Flan 2021: examples-proportional mixing, at most 3,000 examples per task
MAX_TRAIN_EXAMPLES = 30_000  # Flan 2021: at most 30k training examples per dataset (config.data.max_task_examples)
YES_NO = ("yes", "no")
NLI3 = tasks_lib.ANLI_ANSWERS  # entailment, neutral, contradiction
LANGUAGES = {"en": "English", "de": "German", "es": "Spanish", "fr": "French", "cs": "Czech", "fi": "Finnish",
             "ro": "Romanian", "ru": "Russian", "tr": "Turkish"}
GLUE_SPLITS = {"test": "validation"}  # GLUE / SuperGLUE test labels are hidden


@dataclasses.dataclass(frozen=True)
class Spec:
  """One catalogue row: a TFDS dataset as a Flan task."""
  name: str  # the TFDS name (dataset[/config]); also the task name
  cluster: str
  templates: str  # key in templates/flan2021.yaml
  preprocess: tasks_lib.Preprocessor
  metric: str = "exact_match"
  options: tuple[str, ...] | None = None  # shared answer options (multiple choice puts its own in each example)
  split_map: Mapping[str, str] | None = None
  has_rationale: bool = False


# --- Preprocessors (TFDS record -> template fields; None drops unlabelled or malformed records) ---------


def _label(r: Mapping[str, Any], key: str = "label") -> int | None:
  value = int(r[key])
  return None if value < 0 else value


def _pick(options: list[str], index: int | None) -> dict[str, Any] | None:
  if index is None or not 0 <= index < len(options) or not all(str(o).strip() for o in options):
    return None
  return {"options": options, "answer": options[index]}


def _nli3(order: tuple[int, ...] = (0, 1, 2)):
  """Three-way NLI; `order[label]` indexes NLI3 (super_glue/cb's labels are entailment, contradiction, neutral)."""
  def prep(r):
    label = _label(r)
    return None if label is None or label > 2 else {"premise": r["premise"], "hypothesis": r["hypothesis"],
                                                     "answer": NLI3[order[label]]}
  return prep


def _nli2(premise_key: str, hypothesis_key: str, yes_label: int):
  def prep(r):
    label = _label(r)
    return None if label is None else {"premise": r[premise_key], "hypothesis": r[hypothesis_key],
                                       "answer": "yes" if label == yes_label else "no"}
  return prep


def qnli(r):
  label = _label(r)  # 0 = entailment: the sentence answers the question
  return None if label is None else {"question": r["question"], "sentence": r["sentence"],
                                     "answer": "yes" if label == 0 else "no"}


def _answers(values) -> list[str]:
  return [v for v in values if str(v).strip()]


def drop(r):
  refs = _answers([r["answer"], *r["validated_answers"]])
  return {"passage": r["passage"], "question": r["question"], "answer": refs[0], "references": refs} if refs else None


def multirc(r):
  label = _label(r)
  return None if label is None else {"paragraph": r["paragraph"], "question": r["question"],
                                     "candidate": r["answer"], "answer": "yes" if label == 1 else "no"}


def openbookqa(r):
  q = r["question"]
  fields = _pick([q[f"choice_{c}"] for c in "ABCD"], _label(r, "answerKey"))
  return fields and {**fields, "question": q["stem"], "fact": r["fact1"]}


def squad_v2(r):
  refs = _answers(r["answers"]["text"])
  if bool(r["is_impossible"]) or not refs:
    refs = ["unanswerable"]
  return {"context": r["context"], "question": r["question"], "title": r["title"].replace("_", " "),
          "answer": refs[0], "references": refs}


def cosmos_qa(r):
  fields = _pick([r[f"answer{i}"] for i in range(4)], _label(r))
  return fields and {**fields, "context": r["context"], "question": r["question"]}


def record(r):
  answers = _answers(r["answers"])
  entities = sorted(set(_answers(r["entities"])))
  if not answers or "@placeholder" not in r["query"]:
    return None
  passage = r["passage"].replace("@highlight\n", "- ")
  return {"passage": passage, "query": r["query"].replace("@placeholder", "___"), "options": entities or None,
          "answer": answers[0], "references": answers}


def arc(r):
  choices = r["choices"]
  labels, texts = list(choices["label"]), list(choices["text"])
  key = int(r["answerKey"])
  if key not in labels:
    return None
  fields = _pick(texts, labels.index(key))
  return fields and {**fields, "question": r["question"]}


def natural_questions(r):
  refs = _answers(r["answer"])
  return {"question": r["question"], "answer": refs[0], "references": refs} if refs else None


def trivia_qa(r):
  a = r["answer"]
  refs = _answers([a["value"], *a["aliases"]])
  return {"question": r["question"], "answer": refs[0], "references": refs} if refs else None


def copa(r):
  fields = _pick([r["choice1"], r["choice2"]], _label(r))
  connective = {"cause": "because", "effect": "so"}.get(r["question"], "")
  return fields and {**fields, "premise": r["premise"], "question": r["question"], "connective": connective}


def endings(context_key: str, offset: int = 0):
  def prep(r):
    label = _label(r)
    fields = _pick(list(r["endings"]), None if label is None else label - offset)
    return fields and {**fields, "context": r[context_key]}
  return prep


def piqa(r):
  fields = _pick([r["sol1"], r["sol2"]], _label(r))
  return fields and {**fields, "goal": r["goal"]}


def dpr(r):
  fields = _pick(list(r["candidates"]), _label(r))
  return fields and {**fields, "sentence": r["sentence"], "pronoun": r["pronoun"]}


def wsc273(r):
  fields = _pick([r["option1"], r["option2"]], _label(r))
  return fields and {**fields, "sentence": r["text"], "pronoun": r["pronoun_text"]}


def winogrande(r):
  fields = _pick([r["option1"], r["option2"]], _label(r))
  return fields and {**fields, "sentence": r["sentence"].replace("_", "___")}


def _pair(key1: str, key2: str, yes_label: int = 1):
  def prep(r):
    label = _label(r)
    return None if label is None else {"sentence1": r[key1], "sentence2": r[key2],
                                       "answer": "yes" if label == yes_label else "no"}
  return prep


STSB_OPTIONS = ("0", "1", "2", "3", "4", "5")


def stsb(r):
  score = float(r["label"])
  return None if score < 0 else {"sentence1": r["sentence1"], "sentence2": r["sentence2"],
                                 "answer": str(min(5, max(0, round(score))))}


SENTIMENT = ("negative", "positive")


def _sentiment(text_key: str, positive: int, negative: int):
  def prep(r):
    label = int(r["label" if "label" in r else "polarity"])
    if label not in (positive, negative):  # e.g. sentiment140's neutral tweets
      return None
    return {"text": r[text_key], "answer": SENTIMENT[label == positive]}
  return prep


def common_gen(r):
  refs = _answers([r["target"], *r["references"]])
  concepts = _answers(r["concepts"])
  return {"concepts": ", ".join(concepts), "answer": refs[0], "references": refs} if refs and concepts else None


def _table(table) -> str:
  rows = [f"{h} | {c}" for h, c in zip(table["column_header"], table["content"]) if str(c).strip()]
  return "; ".join(rows)


def data_to_text(r):
  data = _table(r["input_text"]["table"])
  return {"data": data, "answer": r["target_text"]} if data and r["target_text"].strip() else None


def _summary(doc_key: str, summary_key: str):
  def prep(r):
    doc, summary = r[doc_key], r[summary_key]
    return {"document": doc, "answer": summary} if doc.strip() and summary.strip() else None
  return prep


def idebate(r):
  doc = " ".join(_answers(r["_argument_sentences"]["value"]))
  return {"document": doc, "answer": r["_claim"]} if doc and r["_claim"].strip() else None


def rotten_tomatoes(r):
  doc = " ".join(_answers(r["_critics"]["value"]))
  return {"document": doc, "answer": r["_critic_consensus"]} if doc and r["_critic_consensus"].strip() else None


def aeslc(r):
  return {"email": r["email_body"], "answer": r["subject_line"]} if r["subject_line"].strip() else None


AG_NEWS = ("World", "Sports", "Business", "Science/Tech")


def ag_news(r):
  label = _label(r)
  return None if label is None else {"title": r["title"], "text": r["description"], "answer": AG_NEWS[label]}


def translation(source: str, target: str):
  def prep(r):
    if not r[source].strip() or not r[target].strip():
      return None
    return {"source": r[source], "source_language": LANGUAGES[source], "target_language": LANGUAGES[target],
            "answer": r[target]}
  return prep


def coqa(r):
  questions, answers = list(r["questions"]), list(r["answers"]["input_text"])
  n = min(len(questions), len(answers))
  if n == 0 or not answers[n - 1].strip():
    return None
  history = "\n".join(f"Q: {q}\nA: {a}" for q, a in zip(questions[:n - 1], answers[:n - 1]))
  return {"context": r["story"], "history": history or "(none)", "question": questions[n - 1],
          "answer": answers[n - 1]}


def quac(r):
  refs = _answers(r["answers"]["text"]) or _answers([r["orig_answer"]["text"]])
  if not refs:
    return None
  return {"context": f"{r['title']}, {r['section_title']}. {r['context']}", "history": "(none)",
          "question": r["question"], "answer": refs[0], "references": refs}


TREC = ("description", "entity", "abbreviation", "person", "number", "location")  # TFDS's label-coarse order


def trec(r):
  return {"text": r["text"], "answer": TREC[int(r["label-coarse"])]}


def cola(r):
  label = _label(r)
  return None if label is None else {"sentence": r["sentence"], "answer": "yes" if label == 1 else "no"}


def wic(r):
  label = _label(r)
  return None if label is None else {"word": r["word"], "sentence1": r["sentence1"], "sentence2": r["sentence2"],
                                     "answer": "yes" if label == 1 else "no"}


def math(r):
  return {"question": r["question"].strip(), "answer": r["answer"].strip()}


def gsm8k(r):
  rationale, _, final = r["answer"].rpartition("####")
  answer = (r.get("short_answer") or final).strip()
  return {"question": r["question"], "rationale": " ".join(rationale.split()), "answer": answer} if answer else None


def esnli(r):
  label = _label(r)
  if label is None or label > 2:
    return None
  return {"premise": r["premise"], "hypothesis": r["hypothesis"], "rationale": r["explanation_1"],
          "answer": NLI3[label]}


# --- The table ----------------------------------------------------------------------------------------

_RANK = "rank_accuracy"
SPECS: tuple[Spec, ...] = (
    *(Spec(f"anli/r{i}", "nli", "anli", tasks_lib.preprocess_anli, _RANK, NLI3)
      for i in (1, 2, 3)),
    Spec("super_glue/cb", "nli", "anli", _nli3((0, 2, 1)), _RANK, NLI3, GLUE_SPLITS),
    Spec("glue/mnli", "nli", "anli", _nli3(), _RANK, NLI3, {"test": "validation_matched"}),
    Spec("glue/qnli", "nli", "qnli", qnli, _RANK, YES_NO, GLUE_SPLITS),
    Spec("glue/rte", "nli", "rte", tasks_lib.preprocess_rte, _RANK, YES_NO, GLUE_SPLITS),
    Spec("snli", "nli", "anli", _nli3(), _RANK, NLI3),
    Spec("glue/wnli", "nli", "rte", _nli2("sentence1", "sentence2", yes_label=1), _RANK, YES_NO, GLUE_SPLITS),
    Spec("super_glue/boolq", "reading_comprehension", "boolq", tasks_lib.preprocess_boolq, _RANK, YES_NO, GLUE_SPLITS),
    Spec("drop", "reading_comprehension", "drop", drop, split_map={"test": "dev"}),
    Spec("super_glue/multirc", "reading_comprehension", "multirc", multirc, _RANK, YES_NO, GLUE_SPLITS),
    Spec("openbookqa", "reading_comprehension", "openbookqa", openbookqa, _RANK),
    Spec("squad/v1.1", "reading_comprehension", "squad", tasks_lib.preprocess_squad, "rouge_l",
         split_map={"test": "validation"}),
    Spec("squad/v2.0", "reading_comprehension", "squad", squad_v2, "rouge_l", split_map={"test": "validation"}),
    Spec("cosmos_qa", "reading_comprehension_commonsense", "cosmos_qa", cosmos_qa, _RANK,
         split_map={"test": "validation"}),
    Spec("super_glue/record", "reading_comprehension_commonsense", "record", record, "exact_match", None, GLUE_SPLITS),
    Spec("ai2_arc/ARC-Easy", "closed_book_qa", "arc", arc, _RANK),
    Spec("ai2_arc/ARC-Challenge", "closed_book_qa", "arc", arc, _RANK),
    Spec("natural_questions_open", "closed_book_qa", "closed_book_qa", natural_questions,
         split_map={"test": "validation"}),
    Spec("trivia_qa/rc.nocontext", "closed_book_qa", "closed_book_qa", trivia_qa, split_map={"test": "validation"}),
    Spec("super_glue/copa", "commonsense", "copa", copa, _RANK, None, GLUE_SPLITS),
    Spec("hellaswag", "commonsense", "endings", endings("context"), _RANK, None, {"test": "validation"}),
    Spec("piqa", "commonsense", "piqa", piqa, _RANK, None, {"test": "validation"}),
    Spec("story_cloze/2016", "commonsense", "endings", endings("context", offset=1), _RANK, None,
         {"train": "validation", "test": "test"}),
    Spec("definite_pronoun_resolution", "coreference", "pronoun", dpr, _RANK),
    Spec("winogrande", "coreference", "winogrande", winogrande, _RANK, None,
         {"train": "train_xl", "test": "validation"}),
    Spec("wsc273", "coreference", "pronoun", wsc273, _RANK, None, {"train": "test", "test": "test"}),
    Spec("glue/mrpc", "paraphrase", "paraphrase", _pair("sentence1", "sentence2"), _RANK, YES_NO, GLUE_SPLITS),
    Spec("glue/qqp", "paraphrase", "paraphrase", _pair("question1", "question2"), _RANK, YES_NO, GLUE_SPLITS),
    Spec("paws_wiki", "paraphrase", "paraphrase", _pair("sentence1", "sentence2"), _RANK, YES_NO),
    Spec("glue/stsb", "paraphrase", "stsb", stsb, _RANK, STSB_OPTIONS, GLUE_SPLITS),
    Spec("imdb_reviews", "sentiment", "sentiment", _sentiment("text", 1, 0), _RANK, SENTIMENT),
    Spec("sentiment140", "sentiment", "sentiment", _sentiment("text", 4, 0), _RANK, SENTIMENT),
    Spec("glue/sst2", "sentiment", "sentiment", _sentiment("sentence", 1, 0), _RANK, SENTIMENT, GLUE_SPLITS),
    Spec("yelp_polarity_reviews", "sentiment", "sentiment", _sentiment("text", 1, 0), _RANK, SENTIMENT),
    Spec("gem/common_gen", "struct_to_text", "common_gen", common_gen, "rouge_l", split_map={"test": "validation"}),
    Spec("dart", "struct_to_text", "data_to_text", data_to_text, "rouge_l", split_map={"test": "validation"}),
    Spec("e2e_cleaned", "struct_to_text", "data_to_text", data_to_text, "rouge_l"),
    Spec("web_nlg", "struct_to_text", "data_to_text", data_to_text, "rouge_l", split_map={"test": "validation"}),
    Spec("aeslc", "summarization", "aeslc", aeslc, "rouge_l"),
    Spec("ag_news_subset", "summarization", "ag_news", ag_news, _RANK, AG_NEWS),
    Spec("cnn_dailymail", "summarization", "summarize", _summary("article", "highlights"), "rouge_l"),
    Spec("gigaword", "summarization", "summarize", _summary("document", "summary"), "rouge_l"),
    Spec("multi_news", "summarization", "summarize", _summary("document", "summary"), "rouge_l"),
    Spec("newsroom", "summarization", "summarize", _summary("text", "summary"), "rouge_l"),
    Spec("opinion_abstracts/idebate", "summarization", "summarize", idebate, "rouge_l", split_map={"test": "train"}),
    Spec("opinion_abstracts/rotten_tomatoes", "summarization", "summarize", rotten_tomatoes, "rouge_l",
         split_map={"test": "train"}),
    Spec("samsum", "summarization", "summarize", _summary("dialogue", "summary"), "rouge_l"),
    Spec("gem/wiki_lingua_english_en", "summarization", "summarize", _summary("source", "target"), "rouge_l"),
    Spec("xsum", "summarization", "summarize", _summary("document", "summary"), "rouge_l"),
    *(Spec(f"para_crawl/en{lang}", "translation", "translate", translation("en", lang), "rouge_l",
           split_map={"test": "train"}) for lang in ("de", "es", "fr")),
    Spec("wmt14_translate/fr-en", "translation", "translate", translation("fr", "en"), "rouge_l"),
    *(Spec(f"wmt16_translate/{lang}-en", "translation", "translate", translation(lang, "en"), "rouge_l")
      for lang in ("cs", "de", "fi", "ro", "ru", "tr")),
    Spec("coqa", "misc", "conversational_qa", coqa),
    Spec("quac", "misc", "conversational_qa", quac, split_map={"test": "validation"}),
    Spec("trec", "misc", "trec", trec, _RANK, TREC),
    Spec("glue/cola", "misc", "cola", cola, _RANK, YES_NO, GLUE_SPLITS),
    Spec("super_glue/wic", "misc", "wic", wic, _RANK, YES_NO, GLUE_SPLITS),
    Spec("math_dataset/algebra__linear_1d", "misc", "math", math),
    Spec("gsm8k", "cot", "gsm8k", gsm8k, has_rationale=True),
    Spec("esnli", "cot", "esnli", esnli, _RANK, NLI3, {"test": "validation"}, has_rationale=True),
)


def tasks(data_dir: str | None = None) -> dict[str, tasks_lib.Task]:
  """Every catalogue row as a Task reading TFDS `data_dir` (nothing is read until a split is loaded)."""
  tmpl = {**templates_lib.load("nlu"), **templates_lib.load("flan2021")}
  out = {}
  for s in SPECS:
    out[s.name] = tasks_lib.Task(
        name=s.name, source=sources.TfdsSource(s.name, data_dir=data_dir, split_map=s.split_map),
        templates=tmpl[s.templates], preprocess=s.preprocess, metric=s.metric, options=s.options, cluster=s.cluster,
        has_rationale=s.has_rationale)
  return out


def cluster_tasks(cluster: str) -> list[str]:
  """Task names of one cluster (an unknown cluster is an error listing the clusters)."""
  if cluster not in CLUSTERS:
    raise ValueError(f"unknown Flan 2021 cluster {cluster!r}; clusters: {', '.join(CLUSTERS)}")
  return [s.name for s in SPECS if s.cluster == cluster]


def held_out(cluster: str) -> list[str]:
  """The training tasks when `cluster` is held out: every task of the other Flan 2021 clusters."""
  cluster_tasks(cluster)
  return [s.name for s in SPECS if s.cluster != cluster and s.cluster in FLAN2021_CLUSTERS]


def mixtures(cap: int = MIXING_CAP) -> list[tuple[str, tuple[str, ...], int]]:
  """(name, member tasks, cap) of flan2021 (Flan 2021's twelve clusters), flan2021_<cluster> (cot included) and
  flan2021_no_<cluster> (flan2021 without that cluster: the leave-one-cluster-out training mixtures), each capped at
  `cap` examples per task; `mixtures.catalogue` makes them `Mixture`s."""
  out = [("flan2021", tuple(s.name for s in SPECS if s.cluster in FLAN2021_CLUSTERS), cap)]
  for c in CLUSTERS:
    out.append((f"flan2021_{c}", tuple(cluster_tasks(c)), cap))
    out.append((f"flan2021_no_{c}", tuple(held_out(c)), cap))
  return out


def build_command(name: str, data_dir: str | None) -> str:
  """The command that prepares TFDS dataset `name` where `tfds.data_source` reads it."""
  where = f" --data_dir={data_dir}" if data_dir else ""
  return f"tfds build {name}{where} --file_format=array_record"


def training_mixture(mixture: str, held_out_cluster: str) -> str:
  """The mixture a run trains on: `flan2021` with a Flan cluster held out is `flan2021_no_<cluster>` (any other
  mixture, or no Flan cluster held out, is left as named)."""
  if held_out_cluster not in CLUSTERS:
    return mixture
  # A mixture written out ("flan2021:0.3,chat:0.7") holds out the cluster from its flan2021 member the same way.
  parts = re.split(r"([,+])", mixture)
  for i, part in enumerate(parts):
    if part.partition(":")[0].strip() == "flan2021":
      parts[i] = part.replace("flan2021", f"flan2021_no_{held_out_cluster}", 1)
  return "".join(parts)
