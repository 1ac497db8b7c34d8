"""``scripts/measure_costs.py`` (``ls_backend.benchmark.measure_costs``) with two real tiny local LLMs, and how the
reproduction applies its costs file."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ls_backend.benchmark import measure_costs
from ls_backend.benchmark.inputs import apply_costs, write_synthetic
from ls_backend.cli import main
from ls_backend.scores import read_scores
from tests.tiny_models import save_sms_llama

TASKS = """
tasks:
  spam:
    question: Is this SMS message spam?
    classes: ["yes", "no"]
  topic:
    question: What is this text about?
    classes: ["cash", "love", "home"]
"""
WORDS = ("free prize call now", "hi how are you", "claim your cash prize", "going home", "thanks love")


@pytest.fixture(scope="module")
def measure() -> ModuleType:
    return measure_costs


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("costs")
    model = save_sms_llama(folder / "model")
    (folder / "tasks.yaml").write_text(TASKS)
    (folder / "llms.yaml").write_text(
        f"llms:\n  - name: tiny\n    kind: hf\n    model: {model}\n    batch_size: 2\n"
        f"  - name: tiny-b\n    kind: hf\n    model: {model}\n    prompt: {{system: Be brief.}}\n"
    )
    items = [{"id": i, "task": task, "text": f"{task}: {WORDS[i % len(WORDS)]} {i}"} for task in ("spam", "topic")
             for i in range(6)]  # fmt: skip
    (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    return folder


def run(measure: object, files: Path, *extra: str) -> int:
    return measure.main([  # type: ignore[attr-defined]
        "--llms", str(files / "llms.yaml"), "--tasks", str(files / "tasks.yaml"), "--items",
        str(files / "items.jsonl"), "--out", str(files / "costs.json"), "--no-progress", *extra,
    ])  # fmt: skip


def test_every_llm_times_the_same_items_of_every_task_uncached(measure, files, monkeypatch):
    from ls_backend.llms.hf import HFLLM

    calls: list[tuple[str, tuple[str, ...]]] = []
    original = HFLLM.score

    def counting(self, texts, prompt):
        calls.append((self.name, tuple(texts)))
        return original(self, texts, prompt)

    monkeypatch.setattr(HFLLM, "score", counting)
    assert run(measure, files, "--per-task", "3", "--rounds", "2") == 0
    result = json.loads((files / "costs.json").read_text())
    assert set(result["llms"]) == {"tiny", "tiny-b"}
    for entry in result["llms"].values():
        assert set(entry["tasks"]) == {"spam", "topic"}
        assert all(v > 0 for v in entry["tasks"].values())
        assert all(len(r) == 2 for r in entry["rounds"].values())
        assert entry["mean_seconds_per_item"] == pytest.approx(np.mean(list(entry["tasks"].values())))
        for task, value in entry["tasks"].items():
            assert value == pytest.approx(np.median(entry["rounds"][task]))
    # 2 rounds x 2 tasks x 2 LLMs x (warm-up + timed); nothing came from a cache
    assert len(calls) == 16
    timed = [texts for _, texts in calls if len(texts) == 3]
    warmups = [texts for _, texts in calls if len(texts) == 2]
    assert len(timed) == len(warmups) == 8
    by_llm = {
        name: {texts for n, texts in calls if n == name and len(texts) == 3} for name in ("tiny", "tiny-b")
    }
    assert by_llm["tiny"] == by_llm["tiny-b"]  # the same items for every LLM
    assert all(not set(w) & set(t) for w in warmups for t in timed)


def test_too_few_items_and_unknown_tasks_are_clear_errors(measure, files, capsys):
    assert run(measure, files, "--per-task", "5") == 2
    assert "--per-task 5 needs 7" in capsys.readouterr().err
    assert run(measure, files, "--only-tasks", "nope") == 2
    assert "no items for task(s) ['nope']" in capsys.readouterr().err


def test_a_costs_file_sets_every_items_cost_and_the_cheapest_first_order(tmp_path):
    scores, _ = write_synthetic(tmp_path, n_items=20, seed=3)
    table = read_scores(scores)
    llms = table.llms
    reversed_costs = {llm: 1.0 + k for k, llm in enumerate(reversed(llms))}
    costs = {"llms": {llm: {"tasks": {t.name: reversed_costs[llm] * (2 if i == 0 else 1)
                                      for i, t in enumerate(table)}} for llm in llms}}  # fmt: skip
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(costs))
    applied = apply_costs(table, path)
    assert applied.llms == tuple(reversed(llms))
    first = next(iter(applied))
    for li, llm in enumerate(first.llms):
        assert np.all(first.costs[li] == 2 * reversed_costs[llm])
    assert np.array_equal(next(iter(table)).logits, first.logits)  # only the costs change

    del costs["llms"][llms[0]]["tasks"][first.name]
    path.write_text(json.dumps(costs))
    with pytest.raises(
        ValueError, match=f"no valid seconds per item for LLM '{llms[0]}' on task '{first.name}'"
    ):
        apply_costs(table, path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a costs file"):
        apply_costs(table, path)


def test_a_missing_costs_file_is_an_error_before_any_work(tmp_path, capsys):
    scores, tasks = write_synthetic(tmp_path, n_items=20, seed=3)
    status = main(["reproduce", "--scores", str(scores), "--tasks", str(tasks), "--costs",
                   str(tmp_path / "nope.json"), "--out", str(tmp_path / "r.md"), "--figures", str(tmp_path / "f")])  # fmt: skip
    assert status == 2
    assert "costs file" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()
