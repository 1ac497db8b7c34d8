from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ls_backend import calibration, metrics
from ls_backend.cli import main
from ls_backend.experiments import (
    CalibrationExperiment,
    CellTrace,
    ExperimentConfig,
    Scenario,
    run_calibration_experiment,
)
from ls_backend.scores import ScoresTable, write_scores
from ls_backend.synthetic import make_synthetic_scores, synthetic_embeddings, task_family

SMALL = ExperimentConfig(shots=(10, 40), repeats=2, n_clusters=3)


def small_table(**kwargs: Any) -> ScoresTable:
    params: dict[str, Any] = {"n_tasks": 6, "n_items": 150, "llms": ("cheap", "dear"), "seed": 0, **kwargs}
    return make_synthetic_scores(**params)


@pytest.fixture(scope="module")
def table() -> ScoresTable:
    return small_table()


@pytest.fixture(scope="module")
def result(table: ScoresTable) -> CalibrationExperiment:
    return run_calibration_experiment(table, synthetic_embeddings(list(table.tasks)), SMALL, progress=False)


def test_scenario_keys_round_trip() -> None:
    for scenario in SMALL.scenarios():
        assert Scenario.from_key(scenario.key) == scenario
    assert [s.key for s in SMALL.scenarios()][:5] == [
        "uncalibrated",
        "ALL-OOT/ST",
        "ALL-OOT/SV",
        "SIM-OOT/ST",
        "SIM-OOT/SV",
    ]
    with pytest.raises(ValueError, match="scenario key"):
        Scenario.from_key("in-task/x/U/ST")


def test_every_cell_measured(result: CalibrationExperiment, table: ScoresTable) -> None:
    assert result.llms == ("cheap", "dear") and result.tasks == tuple(table.tasks)
    assert len(result.scenarios) == 1 + 4 + 2 * 3 * 2
    assert result.skipped == []
    for llm in result.llms:
        for key in result.scenarios:
            per_repeat = result.values[llm][key]
            assert set(per_repeat) == set(table.tasks)
            expected = 2 if key.startswith("in-task") else 1
            assert all(len(v) == expected for v in per_repeat.values())


def test_calibration_lowers_ace_on_average(result: CalibrationExperiment) -> None:
    def mean_over_llms(key: str) -> float:
        return float(np.mean([result.summary(llm, key)["mean"] for llm in result.llms]))  # type: ignore[index]

    uncalibrated = mean_over_llms("uncalibrated")
    calibrated = [
        key for key in result.scenarios if key != "uncalibrated" and not key.startswith("in-task/10/")
    ]
    for key in calibrated:
        assert mean_over_llms(key) < uncalibrated, key
    # the most over-confident LLM gains in every calibrated scenario, with ST even from 10 shots
    cheap = result.summary("cheap", "uncalibrated")["mean"]  # type: ignore[index]
    for key in [*calibrated, "in-task/10/U/ST", "in-task/10/SE/ST", "in-task/10/IE/ST"]:
        assert result.summary("cheap", key)["mean"] < cheap, key  # type: ignore[index]


def test_sim_oot_sources_are_the_same_family(result: CalibrationExperiment, table: ScoresTable) -> None:
    for name, entry in result.sources.items():
        assert name not in entry["ALL-OOT"] and len(entry["ALL-OOT"]) == len(table) - 1
        assert entry["SIM-OOT"] == [
            t for t in table.tasks if t != name and task_family(t) == task_family(name)
        ]
        assert entry["fallback"] is None


def test_heldout_items_never_include_fitted_ones(table: ScoresTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """Instrumented: what the calibrators really saw and what ACE was really computed on."""
    fitted: list[np.ndarray] = []
    measured_sizes: list[int] = []
    make, ace = calibration.make_calibrator, metrics.ace

    def spy_make(name: str, **params: Any) -> calibration.Calibrator:
        calibrator = make(name, **params)
        fit = calibrator.fit

        def recording_fit(logits: Any, labels: Any, sample_weight: Any = None) -> calibration.Calibrator:
            fitted.append(np.asarray(logits).copy())
            return fit(logits, labels, sample_weight)

        calibrator.fit = recording_fit  # type: ignore[method-assign]
        return calibrator

    def spy_ace(scores: Any, hits: Any, n_bins: int = 10) -> float:
        measured_sizes.append(len(scores))
        return ace(scores, hits, n_bins)

    monkeypatch.setattr(calibration, "make_calibrator", spy_make)
    monkeypatch.setattr(metrics, "ace", spy_ace)
    traces: list[CellTrace] = []
    sub = small_table(labeled_fraction=0.8)
    config = ExperimentConfig(shots=(10, 30), repeats=2, n_clusters=3)
    run_calibration_experiment(
        sub, synthetic_embeddings(list(sub.tasks)), config, progress=False, on_cell=traces.append
    )

    assert [len(t.eval_items) for t in traces] == measured_sizes
    calibrated = [t for t in traces if t.scenario != "uncalibrated"]
    assert len(calibrated) == len(fitted)
    for trace, fitted_logits in zip(calibrated, fitted, strict=True):
        task = sub[trace.task]
        li = task.llm_index(trace.llm)
        row_of = {str(item): task.logits[li, i] for i, item in enumerate(task.items)}
        labeled_ids = {str(item) for item in task.items[task.labeled]}
        assert set(trace.eval_items) | set(trace.fit_items) == labeled_ids
        assert not set(trace.eval_items) & set(trace.fit_items)
        if trace.scenario.startswith("in-task"):
            shots = Scenario.from_key(trace.scenario).shots
            assert len(trace.fit_items) == shots == len(set(trace.fit_items))
            np.testing.assert_array_equal(
                np.sort(fitted_logits, axis=0),
                np.sort(np.stack([row_of[i] for i in trace.fit_items]), axis=0),
            )
        else:  # out of task: nothing of the target went into the fit
            assert trace.fit_items == ()
            target_rows = task.logits[li]
            assert not (fitted_logits[:, None, :] == target_rows[None, :, :]).all(axis=2).any()


def test_deterministic_given_seed(table: ScoresTable, result: CalibrationExperiment) -> None:
    embeddings = synthetic_embeddings(list(table.tasks))
    again = run_calibration_experiment(table, embeddings, SMALL, progress=False)
    assert again.values == result.values
    other = run_calibration_experiment(
        table, embeddings, ExperimentConfig(shots=(10,), repeats=2, n_clusters=3, seed=1), progress=False
    )
    assert other.values["cheap"]["uncalibrated"] == result.values["cheap"]["uncalibrated"]
    assert other.values["cheap"]["in-task/10/U/ST"] != result.values["cheap"]["in-task/10/U/ST"]


def test_worker_processes_give_the_same_values_skips_and_traces() -> None:
    """The (task, LLM) pairs measured in two worker processes: the same values, skipped cells and traces, in the
    same order, as in one process; with a task too small to measure and a shot count too large for every task."""
    table = small_table(n_tasks=4, n_items=60)
    table.tasks["tiny-spam_0"] = make_synthetic_scores(
        n_tasks=1, n_items=15, llms=("cheap", "dear"), name_prefix="tiny-"
    ).tasks["tiny-spam_0"]
    config = ExperimentConfig(shots=(10, 45), repeats=2, n_clusters=2)
    embeddings = synthetic_embeddings(list(table.tasks))
    runs = []
    for n_jobs in (1, 2):
        traces: list[CellTrace] = []
        result = run_calibration_experiment(
            table, embeddings, config, progress=False, on_cell=traces.append, n_jobs=n_jobs
        )
        runs.append((result, traces))
    (serial, serial_traces), (parallel, parallel_traces) = runs
    assert parallel.to_json() == serial.to_json()  # values, skipped cells, sources and tables, in order
    assert parallel.values == serial.values and parallel.skipped == serial.skipped
    assert {s["scenario"] for s in serial.skipped} >= {"*", "in-task/45/U/ST"}
    assert parallel_traces == serial_traces
    assert len(serial_traces) == 2 * 4 * (1 + 4 + 1 * 3 * 2 * 2)  # (LLM, task) x measurements


def test_worker_warnings_are_issued_in_the_parent() -> None:
    from ls_backend.experiments import _merge_pair, _PairOutcome

    result = run_calibration_experiment(small_table(n_tasks=2, n_items=60), None, SMALL, progress=False)
    warned = _PairOutcome(warnings=[(calibration.ConvergenceWarning, "ST fit did not converge", __file__, 1)])
    with pytest.warns(calibration.ConvergenceWarning, match="did not converge"):
        _merge_pair(result, "spam_0", "cheap", warned, [], None)


def test_adding_a_task_keeps_the_draws_of_the_others() -> None:
    config = ExperimentConfig(shots=(10,), repeats=1, samplers=("U",), calibrators=("ST",))
    traces_a: list[CellTrace] = []
    traces_b: list[CellTrace] = []
    small, big = small_table(n_tasks=3), small_table(n_tasks=3)
    big.tasks["xspam_0"] = make_synthetic_scores(
        n_tasks=1, n_items=60, llms=("cheap", "dear"), name_prefix="x"
    ).tasks["xspam_0"]
    run_calibration_experiment(small, None, config, progress=False, on_cell=traces_a.append)
    run_calibration_experiment(big, None, config, progress=False, on_cell=traces_b.append)
    draws = {(t.llm, t.task, t.scenario): t.fit_items for t in traces_b}
    for trace in traces_a:
        assert draws[(trace.llm, trace.task, trace.scenario)] == trace.fit_items


def test_small_tasks_and_large_budgets_are_skipped_and_reported() -> None:
    table = small_table(n_tasks=3, n_items=60)
    table.tasks["tiny-spam_0"] = make_synthetic_scores(
        n_tasks=1, n_items=15, llms=("cheap", "dear"), name_prefix="tiny-"
    ).tasks["tiny-spam_0"]
    config = ExperimentConfig(shots=(10, 50), repeats=1, min_heldout=20)
    result = run_calibration_experiment(table, None, config, progress=False)
    reasons = {(s["task"], s["scenario"]): s["reason"] for s in result.skipped if s["llm"] == "cheap"}
    assert "fewer than min_heldout" in reasons[("tiny-spam_0", "*")]
    assert "fewer than 50 shots + 20 held out" in reasons[("spam_0", "in-task/50/IE/SV")]
    assert "tiny-spam_0" not in result.values["cheap"]["uncalibrated"]
    assert set(result.values["cheap"]["in-task/10/U/ST"]) == {"spam_0", "sentiment_0", "topic_0"}
    assert "in-task/50/U/ST" in result.scenarios and result.summary("cheap", "in-task/50/U/ST") is None
    assert "SIM-OOT/ST" not in result.scenarios and any("SIM-OOT left out" in n for n in result.notes)
    assert "Skipped cells" in result.report()
    # the tiny task still serves as an out-of-task source
    assert "tiny-spam_0" in result.sources["spam_0"]["ALL-OOT"]


def test_out_of_task_pools_only_tasks_with_the_same_classes() -> None:
    binary = small_table(n_tasks=3, n_items=80)
    multi = make_synthetic_scores(
        n_tasks=3, n_items=80, classes=("a", "b", "c"), llms=("cheap", "dear"), name_prefix="mc-"
    )
    table = ScoresTable({**binary.tasks, **multi.tasks})
    config = ExperimentConfig(shots=(10,), repeats=1)
    result = run_calibration_experiment(
        table, synthetic_embeddings(list(table.tasks)), config, progress=False
    )
    for name, entry in result.sources.items():
        prefix = name.startswith("mc-")
        assert entry["ALL-OOT"] and all(source.startswith("mc-") == prefix for source in entry["ALL-OOT"])
        assert all(source.startswith("mc-") == prefix for source in entry["SIM-OOT"])
    # spam_0 and mc-spam_0 are one family: SIM-OOT must not pool across the class lists, so it falls back
    assert result.sources["spam_0"]["fallback"] is not None
    assert result.summary("cheap", "SIM-OOT/SV") is not None


def test_weighted_fit_changes_only_non_uniform_draws(table: ScoresTable) -> None:
    embeddings = synthetic_embeddings(list(table.tasks))
    base = ExperimentConfig(shots=(20,), repeats=1, n_clusters=3)
    plain = run_calibration_experiment(table, embeddings, base, progress=False)
    weighted = run_calibration_experiment(
        table,
        embeddings,
        ExperimentConfig(shots=(20,), repeats=1, n_clusters=3, weighted_fit=True),
        progress=False,
    )
    for task, values in plain.values["cheap"]["in-task/20/U/ST"].items():
        assert weighted.values["cheap"]["in-task/20/U/ST"][task] == pytest.approx(values)
    assert weighted.values["cheap"]["in-task/20/SE/ST"] != plain.values["cheap"]["in-task/20/SE/ST"]


def test_embedding_callable_gets_descriptions_or_names(table: ScoresTable) -> None:
    seen: list[list[str]] = []
    stripped = ScoresTable({name: t for name, t in table.tasks.items()})
    first = next(iter(stripped.tasks))
    from dataclasses import replace

    stripped.tasks[first] = replace(stripped.tasks[first], description="")

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return synthetic_embeddings(list(table.tasks))

    config = ExperimentConfig(shots=(10,), repeats=1, samplers=("U",), n_clusters=3)
    with pytest.warns(UserWarning, match="without a description"):
        result = run_calibration_experiment(stripped, embed, config, progress=False)
    assert seen[0][0] == first and seen[0][1] == table[list(table.tasks)[1]].description
    assert any("without a description" in note for note in result.notes)
    with pytest.raises(ValueError, match="one row per task"):
        run_calibration_experiment(table, np.zeros((2, 3)), config, progress=False)
    with pytest.raises(ValueError, match="no embedding for task"):
        run_calibration_experiment(table, {"spam_0": np.ones(3)}, config, progress=False)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="has a labeled item"):
        run_calibration_experiment(small_table(n_tasks=2, n_items=30, labeled_fraction=0.0), progress=False)
    with pytest.raises(ValueError, match="no task"):
        run_calibration_experiment(ScoresTable(), progress=False)
    with pytest.raises(ValueError, match="did not score every task"):
        run_calibration_experiment(
            small_table(n_tasks=2), config=ExperimentConfig(llms=("nope",)), progress=False
        )
    with pytest.raises(ValueError, match="unknown calibrator"):
        ExperimentConfig(calibrators=("XX",))
    with pytest.raises(ValueError, match="unknown sampler"):
        ExperimentConfig(samplers=("ZZ",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shots"):
        ExperimentConfig(shots=(0,))


def test_tables_and_json(result: CalibrationExperiment) -> None:
    text = result.report()
    for heading in ("Table 1", "Table 2", "Table 5"):
        assert heading in text
    assert "| cheap " in result.table1() and "SIM-OOT/SV" in result.table1()
    assert len(result.table5_rows()) == 2 * 2 * 3 * 2
    table2 = result.table2_rows()
    assert [(r["llm"], r["shots"]) for r in table2] == [
        ("cheap", 10),
        ("cheap", 40),
        ("dear", 10),
        ("dear", 40),
    ]
    for row in table2:
        cell_means = [
            result.summary(row["llm"], key)["mean"]  # type: ignore[index]
            for key in result.scenarios
            if key.startswith(f"in-task/{row['shots']}/")
        ]
        assert row["mean"] == min(cell_means)
    parsed = json.loads(result.to_json())
    assert parsed["tables"]["table1"][0]["scenario"] == "uncalibrated"
    again = CalibrationExperiment.from_json(result.to_json())
    assert again.values == result.values and again.table1() == result.table1()
    with pytest.raises(ValueError, match="not a calibration experiment"):
        CalibrationExperiment.from_dict({"llms": []})


# ----------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def scores_file(tmp_path: Path) -> tuple[Path, Path]:
    table = small_table(n_items=100)
    path = tmp_path / "scores.jsonl.gz"
    write_scores(table, path)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "tasks:\n"
        + "".join(
            f"  {t.name}:\n    question: 'Q?'\n    classes: ['yes', 'no']\n    description: '{t.description}'\n"
            for t in table
        ),
        encoding="utf-8",
    )
    return path, tasks


def fake_embed_texts(texts: list[str], model: str | None = None) -> np.ndarray:
    """Stands in for the sentence-embedding model: one direction per family, read off the description."""
    keywords = {"spam": ("spam", "scam", "phishing"), "sentiment": ("review", "opinion"), "topic": ("news",)}
    rows = []
    for text in texts:
        family = next(i for i, words in enumerate(keywords.values()) if any(w in text for w in words))
        rows.append(np.eye(3, 8)[family] + 0.01 * np.arange(8))
    return np.array(rows)


def test_cli_prints_tables(
    scores_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ls_backend import embeddings

    monkeypatch.setattr(embeddings, "embed_texts", fake_embed_texts)
    path, tasks = scores_file
    argv = ["calibration-report", "--scores", str(path), "--tasks", str(tasks), "--repeats", "1"]
    assert main([*argv, "--shots", "10,30", "--n-clusters", "3", "--llm", "dear"]) == 0
    out = capsys.readouterr().out
    assert "Table 1" in out and "Table 2" in out and "Table 5" in out
    assert "SIM-OOT/SV" in out and "| dear " in out and "| cheap " not in out


def test_cli_json(scores_file: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = scores_file
    argv = ["calibration-report", "--scores", str(path), "--json", "--no-sim-oot", "--repeats", "2"]
    assert main([*argv, "--shots", "20", "--bins", "5", "--seed", "3"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert (
        parsed["config"]["n_bins"] == 5
        and parsed["config"]["shots"] == [20]
        and parsed["config"]["seed"] == 3
    )
    assert {row["scenario"] for row in parsed["tables"]["table5"]} == {
        f"in-task/20/{s}/{c}" for s in ("U", "SE", "IE") for c in ("ST", "SV")
    }
    assert all(len(v) == 2 for v in parsed["values"]["cheap"]["in-task/20/IE/ST"].values())


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibration-report", "--scores", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "t"\n', encoding="utf-8")
    assert main(["calibration-report", "--scores", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    unlabeled = tmp_path / "unlabeled.jsonl"
    write_scores(small_table(n_tasks=2, n_items=30, labeled_fraction=0.0), unlabeled)
    assert main(["calibration-report", "--scores", str(unlabeled), "--no-sim-oot"]) == 2
    assert "no item has a label" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    assert main(["calibration-report", "--scores", str(empty)]) == 2
    assert "no rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibration-report", "--scores", str(empty), "--shots", "0"])


def test_warnings_do_not_leak_from_fits(result: CalibrationExperiment) -> None:
    # the calibrators converge on synthetic data: no ConvergenceWarning in a plain run
    table = small_table(n_tasks=2, n_items=60)
    with warnings.catch_warnings():
        warnings.simplefilter("error", calibration.ConvergenceWarning)
        run_calibration_experiment(table, None, ExperimentConfig(shots=(10,), repeats=1), progress=False)
