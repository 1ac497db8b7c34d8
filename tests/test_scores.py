import gzip
import json

import numpy as np
import pytest

from ls_backend.scores import ScoresFormatError, ScoresTable, read_scores, write_scores


def _row(task="t", item="1", llm="a", label="yes", logits=(1.0, 0.0), cost=1.0, **extra):
    return {
        "task": task,
        "item": item,
        "llm": llm,
        "classes": ["yes", "no"],
        "label": label,
        "logits": list(logits),
        "cost": cost,
        **extra,
    }


def test_rows_are_aligned_across_llms_and_ordered_cheapest_first():
    rows = [
        _row(item="1", llm="big", cost=5.0, logits=(0.0, 2.0)),
        _row(item="2", llm="big", cost=5.0, label="no"),
        _row(item="2", llm="small", cost=1.0, label="no", logits=(0.5, 0.0)),
        _row(item="1", llm="small", cost=1.0),
    ]
    task = ScoresTable.from_rows(rows)["t"]
    assert task.llms == ("small", "big")
    assert list(task.items) == ["1", "2"]
    assert task.labels.tolist() == [0, 1]
    assert task.answers.tolist() == [[0, 0], [1, 0]]  # answers default to the argmax
    np.testing.assert_array_equal(task.logits[1, 0], [0.0, 2.0])
    assert task.costs[:, 0].tolist() == [1.0, 5.0]


def test_items_missing_an_llm_are_left_out_with_a_warning():
    rows = [_row(item="1", llm="a"), _row(item="1", llm="b"), _row(item="2", llm="a")]
    with pytest.warns(UserWarning, match="1 item"):
        task = ScoresTable.from_rows(rows)["t"]
    assert list(task.items) == ["1"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"label": "maybe"}, "label 'maybe' is not one of"),
        ({"answer": "perhaps"}, "answer 'perhaps' is not one of"),
        ({"logits": [1.0]}, "2 classes but 1 logits"),
        ({"logits": [float("nan"), 0.0]}, "NaN logit"),
        ({"cost": -1}, "cost must be"),
        ({"classes": ["yes"]}, "at least 2 distinct"),
    ],
)
def test_bad_rows_get_clear_errors(bad, message):
    with pytest.raises(ScoresFormatError, match=message):
        ScoresTable.from_rows([_row(**bad)] if "classes" not in bad else [{**_row(), **bad}])


def test_missing_field_is_named():
    row = _row()
    del row["logits"]
    with pytest.raises(ScoresFormatError, match=r"missing field\(s\) \['logits'\]"):
        ScoresTable.from_rows([row])


def test_conflicting_classes_within_a_task():
    other = {**_row(item="2"), "classes": ["no", "yes"]}
    with pytest.raises(ScoresFormatError, match="has classes"):
        ScoresTable.from_rows([_row(), other])


@pytest.mark.parametrize("name", ["scores.jsonl", "scores.jsonl.gz"])
def test_write_read_round_trip(tmp_path, name):
    rows = [
        _row(item=str(i), llm=llm, cost=c, logits=(i * 0.5, -i))
        for i in range(5)
        for llm, c in [("a", 1), ("b", 2)]
    ]
    table = ScoresTable.from_rows(rows, descriptions={"t": "a test task"})
    path = tmp_path / name
    write_scores(table, path)
    if name.endswith(".gz"):
        with gzip.open(path, "rt") as f:
            json.loads(f.readline())
    again = read_scores(path)["t"]
    original = table["t"]
    np.testing.assert_array_equal(again.logits, original.logits)
    np.testing.assert_array_equal(again.labels, original.labels)
    assert again.llms == original.llms
    assert not list(tmp_path.glob("*.tmp"))


def test_read_reports_the_bad_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(_row()) + "\n{not json\n")
    with pytest.raises(ScoresFormatError, match=r"s.jsonl:2: not valid JSON"):
        read_scores(path)


def test_subset_and_unlabeled_items():
    rows = [_row(item=str(i), label=None if i % 2 else "no") for i in range(4)]
    task = ScoresTable.from_rows(rows)["t"]
    assert task.labeled.tolist() == [True, False, True, False]
    part = task.subset(task.labeled)
    assert part.n_items == 2
    assert part.logits.shape == (1, 2, 2)
