import json
from collections import Counter

import pytest

from ls_backend.cli import main
from ls_backend.datasets import (
    BENCHMARK_TASKS,
    EXAMPLES_PER_CLASS,
    NATURAL_SHARES,
    SOURCES,
    sample_task,
    source_share_of_yes,
    task_examples,
    truncate,
)
from ls_backend.tasks import load_tasks


def test_benchmark_has_enough_binary_tasks_from_enough_sources():
    binary = [t for t in BENCHMARK_TASKS if t.positive is not None]
    multiclass = [t for t in BENCHMARK_TASKS if t.positive is None]
    assert len(binary) >= 10
    assert len({t.source for t in binary}) >= 6
    assert len(multiclass) >= 2
    assert all(t.spec.description for t in BENCHMARK_TASKS)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_sources_load_real_labeled_text(source):
    records = SOURCES[source]()
    assert len(records) > 1000
    assert len({r.id for r in records}) == len(records)
    assert len({r.label for r in records}) >= 2
    assert all(r.text.strip() for r in records[:100])


def test_binary_tasks_are_balanced_seeded_and_truncated():
    task = next(t for t in BENCHMARK_TASKS if t.spec.name == "news_sport")
    items = sample_task(task, 100, seed=3, max_chars=300)
    assert Counter(i["label"] for i in items) == {"yes": 50, "no": 50}
    assert max(len(i["text"]) for i in items) <= 300
    assert items == sample_task(task, 100, seed=3, max_chars=300)
    assert items != sample_task(task, 100, seed=4, max_chars=300)


def test_multiclass_labels_are_the_task_classes():
    task = next(t for t in BENCHMARK_TASKS if t.spec.name == "question_type")
    items = sample_task(task, 200)
    assert {i["label"] for i in items} <= set(task.spec.classes)


def test_truncate_cuts_at_a_word_boundary():
    assert truncate("short", 10) == "short"
    cut = truncate("alpha beta gamma delta", 12)
    assert cut == "alpha beta…"
    assert len(cut) <= 12


def test_cli_writes_items_and_tasks(tmp_path, capsys):
    items, tasks = tmp_path / "items.jsonl", tmp_path / "tasks.yaml"
    assert main(["benchmark-data", "--items", str(items), "--tasks", str(tasks), "--n-items", "20"]) == 0
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    specs = load_tasks(tasks)
    assert len(rows) == 20 * len(BENCHMARK_TASKS)
    assert all(r["label"] in specs[r["task"]].classes for r in rows)
    assert all(len(spec.examples) == EXAMPLES_PER_CLASS * len(spec.classes) for spec in specs.values())
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["sms_spam", "question_type"])
def test_few_shot_examples_cover_every_class_and_are_never_items(name):
    task = next(t for t in BENCHMARK_TASKS if t.spec.name == name)
    examples = task_examples(task)
    assert [label for _, label in examples] == list(task.spec.classes)
    item_texts = {i["text"] for i in sample_task(task, 2000)}
    assert not item_texts & {text for text, _ in examples}


@pytest.mark.parametrize("name", ["sms_spam", "news_topic"])
def test_more_examples_per_class_keep_the_first_ones_and_the_items(name):
    task = next(t for t in BENCHMARK_TASKS if t.spec.name == name)
    one, two = task_examples(task), task_examples(task, per_class=2, n_items=300)
    assert two[: len(one)] == one  # a 1-shot prompt is the same with the longer list
    assert [label for _, label in two[len(one) :]] == list(task.spec.classes)
    assert len({text for text, _ in two}) == len(two)
    item_texts = {i["text"] for i in sample_task(task, 300)}
    assert not item_texts & {text for text, _ in two}
    with pytest.raises(ValueError, match="needs n_items"):
        task_examples(task, per_class=2)


@pytest.mark.parametrize("name", sorted(NATURAL_SHARES))
def test_natural_shares_are_the_sources_class_ratios(name):
    task = next(t for t in BENCHMARK_TASKS if t.spec.name == name)
    assert source_share_of_yes(task) == pytest.approx(NATURAL_SHARES[name], abs=1e-12)
