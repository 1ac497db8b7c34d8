"""Reproduce the paper's Tables 1, 2, 3 and 5 from the committed scores of the public benchmark: the driver of
``lwc reproduce`` (and of ``scripts/reproduce_paper.py``, the same command).

No LLM is called: everything comes from the scores table (see ls_backend/scores.py) and, when given, the
costs file of ``scripts/measure_costs.py`` (seconds per item of each LLM on each task, measured on a quiet
machine), whose numbers replace the contended ``cost`` column of the table. Binary tasks get the paper's
calibration protocol (uncalibrated, ALL-OOT/SIM-OOT x ST/SV, in-task shots x U/SE/IE x ST/SV:
:func:`ls_backend.experiments.run_calibration_experiment`); multi-class tasks have no out-of-task source with
their class list, so they are reported in-task (U only: SE/IE need an out-of-task reference). Table 3 is
:func:`ls_backend.ensemble.report.cascade_table` on repeated random 80/20 splits of every task, at 5 and 10 bins,
bin edges tuned with Optuna. Claims are backed by paired Wilcoxon tests (:mod:`ls_backend.stats`).

``docs/results.md`` is byte-for-byte the same for the same inputs, seed and settings: no timestamps or timings,
fixed decimals, stable orders. Settings and counts are written into it. See docs/benchmark/README.md. The wall
time of each stage goes to stderr with the progress output (:class:`StageTimes`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ls_backend.benchmark.answer_check import answer_check
from ls_backend.benchmark.claims import ClaimEvidence, build_claims, compare
from ls_backend.benchmark.diagnostics import binary_diagnostics
from ls_backend.benchmark.figures import make_figures, student_figures
from ls_backend.benchmark.inputs import apply_costs, load_table, subtable, task_embeddings
from ls_backend.benchmark.noise_floor import ace_noise_floor
from ls_backend.benchmark.reliability import reliability_curves, run_calibration
from ls_backend.benchmark.report import Report, render
from ls_backend.benchmark.settings import DEFAULT_DISCUSSION, Settings
from ls_backend.benchmark.table3 import cascade_jobs, collect_table3, run_cascades
from ls_backend.files import file_sha256
from ls_backend.scores import ScoresTable, read_scores

REPORT_COMMAND = "python scripts/reproduce_paper.py"
"""How the report names the command that wrote it, whichever entry point ran (``lwc reproduce`` runs the same
code): the same inputs give the same bytes."""


class StageTimes:
    """Wall and CPU seconds per stage of the reproduction, summed over the stage's parts, written to stderr as each
    part ends and as a summary (``report``: False keeps them quiet); never into the report, whose bytes must not
    depend on the machine. CPU counts this process and the worker processes that ended within the part."""

    def __init__(self, report: bool = True) -> None:
        self.report = report
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), self._cpu()
        try:
            yield
        finally:
            wall, used = time.perf_counter() - start, self._cpu() - cpu
            self.wall[name] = self.wall.get(name, 0.0) + wall
            self.cpu[name] = self.cpu.get(name, 0.0) + used
            if self.report:
                print(
                    f"[time] {name}: {wall:.1f} s wall, {used:.1f} s CPU{_load()}",
                    file=sys.stderr,
                    flush=True,
                )

    def summary(self) -> str:
        rows = [
            f"  {name:<32} {wall:8.1f} s wall {self.cpu[name]:8.1f} s CPU" for name, wall in self.wall.items()
        ]
        total = f"  {'total':<32} {sum(self.wall.values()):8.1f} s wall {sum(self.cpu.values()):8.1f} s CPU"
        return "\n".join(["[time] stages:", *rows, total])


def _load() -> str:
    if not hasattr(os, "getloadavg"):
        return ""
    one, five, fifteen = os.getloadavg()
    return f" (load average {one:.2f} {five:.2f} {fifteen:.2f})"


def display_path(path: Path) -> str:
    """``path`` as the report shows it: relative to the current directory when it is below it (the committed
    inputs by their place in the repository), else as given."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def command_line(
    scores: Path, tasks: Path | None, costs: Path | None, seed: int, quick: bool, overrides: dict[str, int],
    embeddings_file: Path | None,
) -> str:  # fmt: skip
    """The command the report says regenerates it: every input and every setting that changes a number."""
    return " ".join(
        [REPORT_COMMAND, f"--scores {display_path(scores)}"]
        + ([f"--tasks {display_path(tasks)}"] if tasks else [])
        + ([f"--costs {display_path(costs)}"] if costs else [])
        + [f"--seed {seed}"]
        + (["--quick"] if quick else [])
        + [f"--{k.replace('_', '-')} {v}" for k, v in overrides.items()]
        + ([f"--task-embeddings {display_path(embeddings_file)}"] if embeddings_file else [])
    )


def reproduce(
    scores: Path,
    tasks: Path | None,
    out: Path,
    figures_dir: Path,
    settings: Settings,
    *,
    embeddings_file: Path | None = None,
    costs_file: Path | None = None,
    n_jobs: int = 1,
    progress: bool = True,
    command: str = "",
    discussion_file: Path = Path(DEFAULT_DISCUSSION),
) -> str:
    """Run everything and write ``out`` (and the figures); returns the markdown. ``discussion_file`` holds the
    authors' notes the report ends with."""
    timed = StageTimes(progress)
    text = _reproduce(scores, tasks, out, figures_dir, settings, embeddings_file, costs_file, n_jobs, progress,
                      command, discussion_file, timed)  # fmt: skip
    if progress:
        print(timed.summary(), file=sys.stderr, flush=True)
    return text


def _reproduce(
    scores: Path, tasks: Path | None, out: Path, figures_dir: Path, settings: Settings, embeddings_file: Path | None,
    costs_file: Path | None, n_jobs: int, progress: bool, command: str, discussion_file: Path, timed: StageTimes,
) -> str:  # fmt: skip
    with timed("loading inputs"):
        table, _ = load_table(scores, tasks)
        if costs_file is not None:
            table = apply_costs(table, costs_file)
        llms = table.llms
        binary = [t.name for t in table if len(t.classes) == 2]
        multiclass = [t.name for t in table if len(t.classes) != 2]
        if not binary:
            raise ValueError("the paper's protocol needs binary tasks; the scores table has none")
        binary_table = subtable(table, binary)
        notes: list[str] = []
        embeddings = task_embeddings(binary_table, embeddings_file)
        max_shots = max(settings.shots)

    with timed("calibration experiment"):
        calib = run_calibration(
            binary_table, embeddings, settings, progress, keep_shots=max_shots, n_jobs=n_jobs
        )
    calib_multi = None
    if multiclass:
        with timed("multi-class calibration"):
            calib_multi = run_calibration(
                subtable(table, multiclass), None, settings, progress, keep_shots=None, n_jobs=n_jobs
            )
    experiment = calib.experiment
    best_at_max = {
        row["llm"]: row["scenario"]
        for row in experiment.table2_rows()
        if row["shots"] == max_shots and row.get("best") is not None
    }
    with timed("reliability curves"):
        curves, pooled = reliability_curves(binary_table, calib, best_at_max, settings.ace_bins)
    with timed("noise floor"):
        n_labeled = int(np.median([int(t.labeled.sum()) for t in binary_table]))
        floor = ace_noise_floor(binary_table, llms, settings, n_heldout=max(1, n_labeled - max_shots))
    with timed("answer check"):
        answers = answer_check(binary_table, llms, settings, shots=max_shots)

    with timed("Table 3"):
        jobs = cascade_jobs(subtable(table, binary + multiclass), llms, settings)
        results = run_cascades(jobs, n_jobs, progress)
        table3 = collect_table3(results, binary + multiclass, settings)
    with timed("claims"):
        claims, comparisons = build_claims(ClaimEvidence(experiment, table3, binary, best_at_max), settings)
        for metric, what in (("acc", "accuracy"), ("f1", "F1")):
            if answers.values[f"{metric}_raw"][llms[0]]:
                comparisons.append(compare(f"{what}, in-task SV argmax ({max_shots} labels) vs the LLM's own answer",
                                           "SV argmax", "own answer", answers.pairs(f"{metric}_sv"),
                                           answers.pairs(f"{metric}_raw"), "(LLM, task) mean over draws",
                                           settings))  # fmt: skip

    prompt_study, answer_md, headline = answer_quality(
        table, tasks, scores.parent, embeddings_file, settings, progress, costs_file,
        student_figures=lambda study: student_figures(study, llms, figures_dir, out), timed=timed, n_jobs=n_jobs,
    )  # fmt: skip

    provenance = None
    provenance_path = scores.parent / "provenance.json"
    if provenance_path.exists():
        provenance = json.loads(provenance_path.read_text(encoding="utf-8"))
    discussion = (
        discussion_file.read_text(encoding="utf-8")
        if discussion_file.exists()
        else "(docs/benchmark/discussion.md is missing.)"
    )
    with timed("diagnostics"):
        diagnostics = binary_diagnostics(table, binary, llms)
    report = Report(
        settings=settings, scores_path=display_path(scores), scores_sha256=file_sha256(scores), command=command,
        table=table, llms=llms, binary=binary, multiclass=multiclass, calib=calib, calib_multi=calib_multi,
        table3=table3, claims=claims, comparisons=comparisons, best_at_max=best_at_max, pooled_aces=pooled,
        noise_floor=floor, answers=answers, figures={}, provenance=provenance, discussion=discussion, notes=notes,
        diagnostics=diagnostics,
        costs_path=display_path(costs_file) if costs_file else None,
        costs_sha256=file_sha256(costs_file) if costs_file else None,
        prompt_study=prompt_study, answer_study_md=answer_md, answer_headline=headline,
    )  # fmt: skip
    with timed("figures"):
        report.figures = make_figures(report, figures_dir, out, curves)
    with timed("report"):
        text = render(report)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)
    return text


@dataclass
class AnswerRun:
    """The answer study as run, with what its markdown needs besides: its settings, the served recipe, the label
    count from which the served cascade has the student (None: never), BC's sample curve (None without
    content-free scores) and the product's ``bc_min_items``."""

    study: Any
    settings: Any
    served: Any
    student_from: int | None
    bc_curve: dict[str, dict[str, float]] | None
    bc_min_items_served: int


def answer_quality(
    table: ScoresTable, tasks: Path | None, folder: Path, embeddings_file: Path | None, settings: Settings,
    progress: bool, costs_file: Path | None = None,
    student_figures: Callable[[Any], Mapping[str, str]] | None = None, timed: StageTimes | None = None,
    n_jobs: int = 1,
) -> tuple[dict[str, Any] | None, str | None, dict[str, float]]:  # fmt: skip
    """The prompt study beside the scores (read, not run) and the answer study (run on the scores, with the
    content-free scores and item embeddings beside them when they are there), as markdown and headline numbers.
    ``student_figures`` draws the study's student figures and returns their captions and links, for the
    student's section. ``n_jobs`` worker processes run the study's work with labels (the same numbers)."""
    timed = timed or StageTimes(report=False)
    study_path = folder / "prompt_study.json"
    prompt_study = json.loads(study_path.read_text(encoding="utf-8")) if study_path.exists() else None
    if tasks is None:
        return prompt_study, None, {}
    with timed("answer study"):
        run = run_answers(table, tasks, folder, embeddings_file, settings, progress, costs_file, n_jobs)
    with timed("figures"):
        links = student_figures(run.study) if student_figures is not None else {}
    with timed("answer study tests and markdown"):
        markdown, headline = answer_markdown(run, table.llms, links)
    return prompt_study, markdown, headline


def run_answers(
    table: ScoresTable, tasks: Path, folder: Path, embeddings_file: Path | None, settings: Settings,
    progress: bool, costs_file: Path | None, n_jobs: int = 1,
) -> AnswerRun:  # fmt: skip
    """The answer study on the scores, and BC's sample curve."""
    from ls_backend.benchmark.answers import (
        Recipe,
        StudySettings,
        bc_sample_curve,
        item_embeddings_by_task,
        run_answer_study,
    )
    from ls_backend.datasets import NATURAL_SHARES
    from ls_backend.embeddings import read_text_embeddings
    from ls_backend.loop.trainer import LoopConfig
    from ls_backend.server.config import CascadeSettings
    from ls_backend.server.oot import CONTENT_FREE_FILE
    from ls_backend.tasks import load_tasks

    specs = load_tasks(tasks)
    texts = {
        n: " ".join(p.strip() for p in (t.question, t.description) if p and p.strip())
        for n, t in specs.items()
    }
    pinned = json.loads(embeddings_file.read_text(encoding="utf-8")) if embeddings_file else None
    memo: dict[str, np.ndarray] = {}

    def embed(batch: Sequence[str]) -> np.ndarray:
        # --task-embeddings pins each task's vector; the project's text is a task's text
        if pinned is not None:
            by_text = {texts[n]: np.asarray(v, dtype=np.float64) for n, v in pinned.items() if n in texts}
            return np.stack([by_text[t] for t in batch])
        missing = [t for t in dict.fromkeys(batch) if t not in memo]
        if missing:
            from ls_backend.embeddings import embed_texts

            memo.update(zip(missing, embed_texts(missing), strict=True))
        return np.stack([memo[t] for t in batch])

    cf_path = folder / CONTENT_FREE_FILE
    content_free = read_scores(cf_path) if cf_path.exists() else None
    vectors_path = folder / "embeddings.npz"
    item_vectors = (
        item_embeddings_by_task(table, read_text_embeddings(vectors_path)[1])
        if vectors_path.exists()
        else None
    )
    defaults = CascadeSettings()
    served = Recipe(defaults.correction, defaults.calibrator, defaults.answer)
    loop = LoopConfig()
    study_settings = StudySettings(
        repeats=settings.answer_repeats,
        seed=settings.seed,
        served=served,
        cost_weight=loop.cost_weight,
    )
    say = (lambda view: print(f"answer study: {view}", file=sys.stderr, flush=True)) if progress else None
    costs = json.loads(costs_file.read_text(encoding="utf-8")) if costs_file is not None else {}
    student_costs = costs.get("student", {}).get("tasks")
    study = run_answer_study(
        table,
        texts,
        embed,
        content_free,
        item_vectors,
        NATURAL_SHARES,
        study_settings,
        say,
        student_costs,
        n_jobs,
    )
    if progress and study.tunings_cut_short:
        print(f"answer study: warning: {study.tunings_cut_short} in-task tunings stopped at their time cap, so their "
              "numbers depend on this machine's speed", file=sys.stderr, flush=True)  # fmt: skip
    curve = bc_sample_curve(table, content_free, seed=settings.seed) if content_free is not None else None
    student_from = loop.student_min_labels if loop.student else None
    return AnswerRun(study, study_settings, served, student_from, curve, defaults.bc_min_items)


def answer_markdown(
    run: AnswerRun, llms: Sequence[str], links: Mapping[str, str]
) -> tuple[str, dict[str, float]]:
    """The answer study's markdown (with the student figures' ``links``, caption -> link) and headline numbers."""
    from ls_backend.benchmark.answers import (
        answers_markdown,
        bc_curve_markdown,
        bc_min_items,
        student_markdown,
    )

    markdown, headline = answers_markdown(run.study, llms, run.served, run.settings, run.student_from)
    student_md, student_headline = student_markdown(run.study, llms, run.settings, links)
    if student_md:
        markdown += "\n" + student_md
        headline |= student_headline
    if run.bc_curve is not None:
        needed = bc_min_items(run.bc_curve)
        markdown += (
            "\n### How many items batch calibration needs\n\nAccuracy of each LLM's corrected answer (the argmax of "
            "its corrected logits, no calibrator) on every item of the balanced binary tasks, mean over tasks, with "
            "BC fitted on that many random items of the task (10 draws each) or on all of them, against CC and no "
            "correction:\n\n" + bc_curve_markdown(run.bc_curve) + "\n\n"
            + (f"BC is at least as accurate as CC, which stands in before it, from **{needed}** items on (the mean over "
               f"LLMs); the product's `cascade.bc_min_items` is {run.bc_min_items_served}.\n"
               if needed is not None else "BC did not reach CC's accuracy at any of these sizes.\n")
        )  # fmt: skip
    return markdown, headline
