"""``lwc cascade-report`` on a synthetic scores file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ls_backend.cli import main
from ls_backend.ensemble import CascadePolicy
from ls_backend.scores import read_scores, write_scores
from ls_backend.synthetic import make_synthetic_scores

FAST = ["--trials", "8", "--splits", "2", "--eval-splits", "2", "--bins", "5"]


@pytest.fixture(scope="module")
def scores_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cascade") / "scores.jsonl"
    write_scores(make_synthetic_scores(n_tasks=2, n_items=300, seed=5), path)
    return path


def test_text_report_has_the_table3_structure(scores_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["cascade-report", "--scores", str(scores_file), *FAST, "--positive-class", "yes", "--frontier"])
        == 0
    )
    out = capsys.readouterr().out
    table = read_scores(scores_file)
    for name in table.tasks:
        assert f"task {name}:" in out
    assert "average over 2 task(s)" in out
    for method in (*table.llms, "majority vote", "weighted majority (uncalibrated)",
                   "weighted majority (calibrated ST)", "cascade (uncalibrated)", "cascade (calibrated ST)"):  # fmt: skip
        assert out.count(f"  {method} ") == 3, method
    assert "frontier of the calibrated cascade" in out


def test_json_report_and_saved_policies(
    scores_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "policies"
    argv = ["cascade-report", "--scores", str(scores_file), *FAST, "--json", "--save-policies", str(folder),
            "--calibrator", "SV", "--lambda", "0.1", "--reference-llm", "large-llm"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference_llm"] == "large-llm" and report["settings"]["lambda"] == 0.1
    rows = {row["method"]: row for row in report["average"]}
    assert rows["large-llm"]["relative_cost"] == pytest.approx(1.0)
    assert rows["majority vote"]["cost_per_item"] == pytest.approx(
        sum(rows[llm]["cost_per_item"] for llm in report["llms"])
    )
    for task_name, task in report["tasks"].items():
        assert task["f1_of"] == "macro"
        cascade = next(r for r in task["rows"] if r["method"] == "cascade (calibrated SV)")
        assert sum(cascade["depth_fractions"]) == pytest.approx(1.0)
        assert all(0 <= task_row["f1"] <= 1 for task_row in task["rows"])
        policy = CascadePolicy.from_json((folder / f"{task_name}.policy.json").read_text())
        first_calibrator = policy.calibrators[0]
        assert policy.lam == 0.1 and first_calibrator is not None and first_calibrator["calibrator"] == "SV"
        assert policy.classes == ("yes", "no")
        result = policy.predict(np.zeros((3, 4), dtype=int), np.full((3, 4), 0.9))
        assert (result.predictions == 0).all()
    f1_of_task = [
        next(r["f1"] for r in t["rows"] if r["method"] == "majority vote") for t in report["tasks"].values()
    ]
    assert rows["majority vote"]["f1"] == pytest.approx(np.mean(f1_of_task))


def test_errors_are_reported(scores_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cascade-report", "--scores", str(scores_file), "--llm", "ghost"]) == 2
    assert "ghost" in capsys.readouterr().err
    assert main(["cascade-report", "--scores", str(scores_file), "--calibrator", "XX", *FAST]) == 2
    assert "unknown calibrator" in capsys.readouterr().err
    assert main(["cascade-report", "--scores", str(scores_file), "--min-items", "100000"]) == 2


def test_worker_processes_give_the_same_report(scores_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cascade-report", "--scores", str(scores_file), *FAST, "--json", "--frontier"]
    assert main(argv) == 0
    one_process = json.loads(capsys.readouterr().out)
    assert main([*argv, "--jobs", "2"]) == 0
    assert json.loads(capsys.readouterr().out) == one_process
