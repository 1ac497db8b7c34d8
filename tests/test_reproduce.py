"""``lwc reproduce`` (and ``scripts/reproduce_paper.py``, the same command) end to end on a small synthetic table
(quick mode), and the parts of ``ls_backend.benchmark`` it is made of."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ls_backend.benchmark.claims import Comparison, compare, verdict
from ls_backend.benchmark.inputs import write_synthetic
from ls_backend.benchmark.settings import Settings
from ls_backend.benchmark.table3 import cascade_jobs, cascade_seed
from ls_backend.files import file_sha256
from ls_backend.markdown import fmt, markdown_table, pval
from ls_backend.scores import read_scores
from ls_backend.synthetic import synthetic_embeddings

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "reproduce_paper.py"
RESCORE = REPO_ROOT / "scripts" / "rescore_benchmark.py"
# ``lwc`` run from the repository (``python -m ls_backend.cli``), whichever checkout the installed entry point serves
LWC = [sys.executable, "-m", "ls_backend.cli"]

HEADINGS = (
    "## Headline",
    "## Benchmark",
    "## Answer quality: what the product serves, before and with in-task labels",
    "## Settings",
    "## Table 1: uncalibrated vs out-of-task calibration (binary tasks)",
    "## Table 2: best in-task method per shot count (binary tasks)",
    "## Table 5: every shots x sampler x calibrator cell (binary tasks)",
    "## Multi-class tasks: in-task calibration",
    "## Table 3: single LLMs, votes and cascades",
    "### 5 bins per LLM",
    "### 10 bins per LLM",
    "## Figures",
    "## Claims",
    "## Paired statistics",
    "## Discussion",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bench")
    scores, tasks = write_synthetic(folder, n_items=100, seed=1)
    names = list(read_scores(scores).tasks)
    vectors = synthetic_embeddings(names)
    embeddings = folder / "embeddings.json"
    embeddings.write_text(json.dumps({n: v.tolist() for n, v in zip(names, vectors, strict=True)}))
    return {"scores": scores, "tasks": tasks, "embeddings": embeddings, "folder": folder}


def run_reproduce(
    command: list[str], inputs: dict[str, Path], *extra: str
) -> subprocess.CompletedProcess[str]:
    folder = inputs["folder"]
    command = [
        *command, "--scores", str(inputs["scores"]), "--tasks", str(inputs["tasks"]),
        "--task-embeddings", str(inputs["embeddings"]), "--out", str(folder / "results.md"),
        "--figures", str(folder / "figures"), "--quick", "--no-progress", *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_report_is_byte_identical_across_runs_entry_points_and_worker_counts(inputs: dict[str, Path]) -> None:
    out = inputs["folder"] / "results.md"
    first = run_reproduce([sys.executable, str(SCRIPT)], inputs, "--jobs", "1")
    assert first.returncode == 0, first.stderr
    text = out.read_text(encoding="utf-8")
    figure_dir = inputs["folder"] / "figures"
    figures = sorted(p.name for p in figure_dir.iterdir())
    assert figures == ["ace_vs_shots.png", "cost_frontier.png", "cost_frontier_student.png", "learning_curve.png",
                       "reliability.png"]  # fmt: skip
    pngs = {name: (figure_dir / name).read_bytes() for name in figures}
    out.unlink()
    # lwc reproduce is the same command; the same numbers whatever the number of worker processes
    second = run_reproduce([*LWC, "reproduce"], inputs, "--jobs", "2")
    assert second.returncode == 0, second.stderr
    assert out.read_text(encoding="utf-8") == text
    assert {name: (figure_dir / name).read_bytes() for name in figures} == pngs

    for heading in HEADINGS:
        assert f"\n{heading}\n" in text, heading
    for figure in figures:
        assert f"](figures/{figure})" in text
    assert "**Quick mode**" in text
    assert text.count("- **Claim ") == 5  # claim 1, claim 2 (SE, IE), claim 3 (5 and 10 bins)
    assert "Wilcoxon" in text and not re.search(r"\bnan\b", text, flags=re.IGNORECASE)
    # Every LLM and task appears in the report.
    table = read_scores(inputs["scores"])
    for name in [*table.tasks, *table.llms]:
        assert name in text
    # binary tasks show accuracy / AUC of the logit margin; the generated discussion says how often each LLM says yes
    assert "AUC (binary, mean)" in text and re.search(r"\| 0\.\d{3} / 0\.\d{3} \|", text)
    assert text.count("answering yes to ") == len(table.llms)
    assert "## Beyond the paper: answering with the calibrated argmax" in text
    assert text.count("- Beyond the paper: ") == 2  # accuracy and F1, each with its paired test
    assert "within half of weighted majority vote's cost reaches a mean test F1 of 0." in text
    assert "### The served cascade against the paper's method, each LLM and the supervised anchor" in text
    assert text.count("- **Answers ") == 2  # before any label and with 50 labels
    # the student's section links its two figures and says what the student buys within half the cascade's cost
    student = text[text.index("### The student: ") : text.index("### How many items batch calibration needs")]
    for figure in ("learning_curve.png", "cost_frontier_student.png"):
        assert f"](figures/{figure})" in student and text.count(f"](figures/{figure})") == 1
    assert "With 50 labels, within half of the LLM cascade's cost (0." in student


@pytest.mark.parametrize(
    "command", [[sys.executable, str(SCRIPT)], [*LWC, "reproduce"]], ids=["script", "lwc"]
)
def test_missing_scores_file_is_a_clear_error(tmp_path: Path, command: list[str]) -> None:
    result = subprocess.run(
        [*command, "--scores", str(tmp_path / "none.jsonl.gz"), "--no-progress"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "rescore_benchmark" in result.stderr


def comparison(a: list[float], b: list[float]) -> Comparison:
    settings = Settings(bootstrap_resamples=50)
    return compare("x", "a", "b", np.array(a), np.array(b), "pair", settings)


def test_verdicts() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, 30)
    lower = comparison(list(base * 0.5), list(base))
    assert verdict(lower, want_lower=True) == "holds"
    assert verdict(lower, want_lower=False) == "does not hold (significantly the other way)"
    noisy = comparison(list(base[:6] - 0.001 * np.array([1, -1, 1, -1, 1, 1])), list(base[:6]))
    assert verdict(noisy, want_lower=True) == "same direction, not significant"
    # significant over many repeats, but the per-task means (the coarser pairs) are not: not "holds"
    coarse_noisy = compare("x", "a", "b", base * 0.5, base, "pair", Settings(bootstrap_resamples=50),
                           coarse=(noisy.a, noisy.b, "task"))  # fmt: skip
    assert verdict(coarse_noisy, want_lower=True) == (
        "same direction; significant over repeats, not over per-task means"
    )
    coarse_agrees = compare("x", "a", "b", base * 0.5, base, "pair", Settings(bootstrap_resamples=50),
                            coarse=(lower.a, lower.b, "task"))  # fmt: skip
    assert verdict(coarse_agrees, want_lower=True) == "holds"
    assert lower.relative == pytest.approx(-0.5)
    assert lower.ci[0] < lower.test.mean_difference < lower.ci[1]


def test_compare_drops_nan_pairs_explicitly() -> None:
    c = comparison([0.1, np.nan, 0.3, 0.2], [0.2, 0.1, np.nan, 0.3])
    assert c.test.n_pairs == 2 and c.a.tolist() == [0.1, 0.2]


def test_cascade_seeds_are_independent_of_other_tasks_and_paired_across_bins() -> None:
    assert cascade_seed(0, "sms_spam", 0) == cascade_seed(0, "sms_spam", 0)
    seeds = {cascade_seed(0, task, r) for task in ("a", "b") for r in range(3)}
    assert len(seeds) == 6
    settings = Settings(eval_repeats=2, cascade_bins=(5, 10))
    table = read_scores_fixture()
    jobs = cascade_jobs(table, table.llms, settings)
    by_key = {(j.task, j.repeat): set() for j in jobs}
    for job in jobs:
        by_key[job.task, job.repeat].add(job.seed)
    assert all(len(s) == 1 for s in by_key.values())  # 5 and 10 bins share each split
    assert len(jobs) == len(table) * 2 * 2


def test_run_jobs_starts_the_longest_first_and_yields_in_job_order(monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ProcessPoolExecutor

    from ls_backend.benchmark.table3_runner import expected_cost, run_jobs

    settings = Settings(eval_repeats=1, cascade_bins=(2, 5), trials=3, inner_splits=2)
    table = read_scores_fixture()
    jobs = [s.job for s in cascade_jobs(table, table.llms, settings)]
    assert [j.options.n_bins for j in jobs] == [2, 5, 2, 5]
    assert expected_cost(jobs[1]) > expected_cost(jobs[0]) == expected_cost(jobs[2])
    submitted: list[Any] = []
    submit = ProcessPoolExecutor.submit

    def recording_submit(self: ProcessPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        submitted.append(args[0])
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", recording_submit)
    serial = list(run_jobs(jobs, 1))
    parallel = list(run_jobs(jobs, 2))
    position = {id(job): i for i, job in enumerate(jobs)}
    assert [position[id(job)] for job in submitted] == [1, 3, 0, 2]  # 5 bins first, ties in job order
    assert (
        [position[id(job)] for job, _ in parallel] == [position[id(job)] for job, _ in serial] == [0, 1, 2, 3]
    )
    for (_, one), (_, two) in zip(serial, parallel, strict=True):
        one.pop("policy", None)
        two.pop("policy", None)
        np.testing.assert_equal(two, one)


def read_scores_fixture() -> Any:
    from ls_backend.synthetic import make_synthetic_scores

    return make_synthetic_scores(n_tasks=2, n_items=60)


def test_markdown_table_alignment() -> None:
    text = markdown_table(["name", "value"], [["a", "1.0"], ["long name", "10.25"]])
    lines = text.splitlines()
    assert lines[0] == "| name      | value |"
    assert lines[1] == "|-----------|------:|"
    assert lines[3] == "| long name | 10.25 |"
    assert fmt(float("nan")) == "-" and fmt(0.12345) == "0.1235" and pval(1e-7) == "< 0.0001"


def test_provenance_only_records_models_prompts_and_costs(tmp_path: Path) -> None:
    scores, _tasks = write_synthetic(tmp_path, n_items=20, seed=0)
    (tmp_path / "items.jsonl").write_text('{"id": "0", "task": "spam_0", "text": "hi", "label": "yes"}\n')
    table = read_scores(scores)
    llms = tmp_path / "llms.yaml"
    llms.write_text(
        "llms:\n"
        + "".join(
            f"  - name: {name}\n    kind: packaged\n    model: {model}\n"
            for name, model in zip(
                table.llms,
                ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"),
                strict=True,
            )
        )
    )
    quiet = {llm: {"tasks": {t.name: 0.5 * (k + 1) for t in table}} for k, llm in enumerate(table.llms)}
    (tmp_path / "costs.json").write_text(json.dumps({"llms": quiet}))
    rescore = subprocess.run(
        [sys.executable, str(RESCORE), "--llms", str(llms), "--dir", str(tmp_path), "--provenance-only"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert rescore.returncode == 0, rescore.stderr
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    by_name = {entry["name"]: entry for entry in provenance["llms"]}
    from ls_backend.llms.packaged import packaged_model

    assert by_name[table.llms[0]]["sha256"] == packaged_model("smollm2-135m-instruct").sha256
    expected = float(np.concatenate([t.costs[t.llm_index(table.llms[0])] for t in table]).mean())
    assert by_name[table.llms[0]]["mean_seconds_per_item"] == pytest.approx(expected)
    total = float(np.concatenate([t.costs[t.llm_index(table.llms[0])] for t in table]).sum())
    assert by_name[table.llms[0]]["total_seconds"] == pytest.approx(total)
    n_items = sum(t.n_items for t in table)
    assert by_name[table.llms[1]]["total_seconds_at_quiet_costs"] == pytest.approx(1.0 * n_items)
    assert set(provenance["prompts"][table.llms[1]]) == set(table.tasks)
    assert provenance["files"]["scores"]["sha256"] == file_sha256(scores)
    assert provenance["package_versions"]["numpy"] == np.__version__
