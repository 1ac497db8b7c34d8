"""``lwc score`` end to end, in-process (``ls_backend.cli.main``), with a real tiny local model.

The LLM config uses kind ``hf`` with a folder holding a tiny random LlamaForCausalLM and a word-level tokenizer
saved with ``save_pretrained``; a second run is shown to make no LLM call (the cache), by counting calls of
``HFLLM.score``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ls_backend.cli import main
from ls_backend.scores import read_scores
from tests.tiny_models import save_sms_llama

TASKS = """
tasks:
  spam:
    question: Is this SMS message spam?
    classes: ["yes", "no"]
    description: Unsolicited advertising or scams in text messages.
  topic:
    question: What is this text about?
    classes: ["cash", "love", "home"]
"""

ITEMS = [
    {"id": 1, "task": "spam", "text": "free prize call now", "label": "yes"},
    {"id": 2, "task": "spam", "text": "hi how are you", "label": "no"},
    {"id": 3, "task": "spam", "text": "claim your cash prize"},
    {"id": "a", "task": "topic", "text": "win cash now", "label": "cash"},
    {"id": "b", "task": "topic", "text": "going home", "label": "home"},
    {"id": 1, "task": "topic", "text": "thanks love"},  # same id as a spam item: ids are per task
]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_sms_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def files(tmp_path, model_folder):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    (tmp_path / "llms.yaml").write_text(
        f"llms:\n  - name: tiny\n    kind: hf\n    model: {model_folder}\n    batch_size: 2\n"
        f"  - name: tiny-b\n    kind: hf\n    model: {model_folder}\n    prompt: {{system: Be brief.}}\n"
        "    cost: {unit: per_call, per_call: 0.5}\n"
    )
    write_items(tmp_path / "items.jsonl", ITEMS)
    return tmp_path


def write_items(path, items):
    path.write_text("".join((json.dumps(i) if isinstance(i, dict) else i) + "\n" for i in items))


def args(d, *extra):
    return [
        "score",
        "--llms",
        str(d / "llms.yaml"),
        "--tasks",
        str(d / "tasks.yaml"),
        "--items",
        str(d / "items.jsonl"),
        "--out",
        str(d / "scores.jsonl"),
        "--no-progress",
        *extra,
    ]


@pytest.fixture
def count_calls(monkeypatch):
    from ls_backend.llms.hf import HFLLM

    calls: list[tuple[str, int]] = []
    original = HFLLM.score

    def counting(self, texts, prompt):
        calls.append((self.name, len(texts)))
        return original(self, texts, prompt)

    monkeypatch.setattr(HFLLM, "score", counting)
    return calls


def test_score_writes_the_table_and_a_second_run_asks_no_llm(files, count_calls, capsys):
    assert main(args(files, "--batch-size", "2")) == 0
    out = capsys.readouterr().out
    assert "wrote 12 rows" in out
    assert (files / "scores.jsonl.cache.sqlite").exists()
    # 3 spam items in batches of 2 + 3 topic items in batches of 2, for each of 2 LLMs
    assert sum(n for _, n in count_calls) == 12 and len(count_calls) == 8
    table = read_scores(files / "scores.jsonl")
    spam, topic = table["spam"], table["topic"]
    assert spam.classes == ("yes", "no") and topic.classes == ("cash", "love", "home")
    assert list(spam.items) == ["1", "2", "3"] and list(topic.items) == ["a", "b", "1"]
    np.testing.assert_array_equal(spam.labels, [0, 1, -1])
    np.testing.assert_array_equal(topic.labels, [0, 2, -1])
    assert set(spam.llms) == {"tiny", "tiny-b"}
    np.testing.assert_array_equal(spam.costs[spam.llm_index("tiny-b")], 0.5)
    assert (spam.costs[spam.llm_index("tiny")] > 0).all()
    np.testing.assert_array_equal(spam.answers, spam.logits.argmax(axis=2))
    first_rows = (files / "scores.jsonl").read_text()

    count_calls.clear()
    assert main(args(files, "--batch-size", "2")) == 0
    out = capsys.readouterr().out
    assert count_calls == []
    assert (files / "scores.jsonl").read_text() == first_rows
    summary = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("tiny")}
    assert summary["tiny"][1:4] == ["6", "0", "6"]  # items, called, cached
    assert summary["tiny-b"][5] == "3"  # 6 calls at 0.5 each


def test_the_llms_prompt_overrides_are_used(files, count_calls):
    """tiny-b has a system text, so its prompts (and its logits) differ from tiny's on the same weights."""
    assert main(args(files)) == 0
    spam = read_scores(files / "scores.jsonl")["spam"]
    assert not np.allclose(spam.logits[spam.llm_index("tiny")], spam.logits[spam.llm_index("tiny-b")])


def test_matches_the_llm_called_directly(files, model_folder):
    from ls_backend.llms.config import load_llm_configs
    from ls_backend.tasks import load_tasks

    assert main(args(files, "--cache", str(files / "elsewhere.sqlite"))) == 0
    assert (files / "elsewhere.sqlite").exists() and not (files / "scores.jsonl.cache.sqlite").exists()
    config = load_llm_configs(files / "llms.yaml")[0]
    task = load_tasks(files / "tasks.yaml")["topic"]
    direct = config.build().score(["win cash now", "going home", "thanks love"], config.prompt_for(task))
    topic = read_scores(files / "scores.jsonl")["topic"]
    np.testing.assert_allclose(topic.logits[topic.llm_index("tiny")], direct.logits, atol=1e-5)


def test_interrupted_run_resumes(files, monkeypatch, capsys):
    from ls_backend.llms.hf import HFLLM

    original = HFLLM.score
    calls: list[int] = []

    def interrupted(self, texts, prompt):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(texts))
        return original(self, texts, prompt)

    monkeypatch.setattr(HFLLM, "score", interrupted)
    assert main(args(files, "--batch-size", "2")) == 130
    assert "run the same command again to resume" in capsys.readouterr().out
    assert not (files / "scores.jsonl").exists()

    resumed: list[int] = []

    def counting(self, texts, prompt):
        resumed.append(len(texts))
        return original(self, texts, prompt)

    monkeypatch.setattr(HFLLM, "score", counting)
    assert main(args(files, "--batch-size", "2")) == 0
    assert sum(resumed) == 12 - sum(calls)


def test_empty_texts_are_skipped_with_a_warning_and_counted(files, capsys, caplog):
    write_items(files / "items.jsonl", [*ITEMS, {"id": 9, "task": "spam", "text": "   "}])
    assert main(args(files)) == 0
    assert "skipped 1 item(s) with empty text" in capsys.readouterr().out
    assert "has empty text; skipped" in caplog.text
    assert "9" not in list(read_scores(files / "scores.jsonl")["spam"].items)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["{not json"], "items.jsonl:1: not valid JSON"),
        ([ITEMS[0], "[1, 2]"], "items.jsonl:2: expected a JSON object"),
        ([{"id": 1, "task": "spam"}], "missing field"),
        ([{"id": 1, "task": "nope", "text": "x"}], "items.jsonl:1: unknown task 'nope'"),
        ([{"id": 1, "task": "spam", "text": "x", "label": "maybe"}], "label 'maybe' is not one of"),
        (
            [ITEMS[0], ITEMS[1], {**ITEMS[1], "text": "other"}],
            "items.jsonl:3: duplicate item id '2' in task 'spam'",
        ),
        ([{"id": None, "task": "spam", "text": "x"}], "'id' must be"),
        ([{"id": 1, "task": "spam", "text": 5}], "'text' must be a string"),
        ([{"id": 1, "task": "spam", "text": "x", "lable": "yes"}], "unknown field"),
        ([{"id": 1, "task": "spam", "text": ""}], "no items to score"),
    ],
)
def test_bad_items_are_clear_errors(files, capsys, lines, message):
    write_items(files / "items.jsonl", lines)
    assert main(args(files)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("which", "message"),
    [("items.jsonl", "items file"), ("tasks.yaml", "tasks file"), ("llms.yaml", "LLM config")],
)
def test_missing_files_are_clear_errors(files, capsys, which, message):
    (files / which).unlink()
    assert main(args(files)) == 2
    err = capsys.readouterr().err
    assert message in err and "does not exist" in err


def test_bad_batch_size_and_output_folder(files, capsys):
    assert main(args(files, "--batch-size", "0")) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    argv = args(files)
    argv[argv.index("--out") + 1] = str(files / "missing" / "scores.jsonl")
    assert main(argv) == 2
    assert "output folder" in capsys.readouterr().err
