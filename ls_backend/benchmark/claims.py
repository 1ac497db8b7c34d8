"""The paper's three headline claims and the supporting comparisons, each a paired test with a verdict."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ls_backend.benchmark.settings import Settings
from ls_backend.benchmark.table3 import CASCADE_CAL, WMV_CAL, Table3
from ls_backend.experiments import UNCALIBRATED, CalibrationExperiment, Scenario
from ls_backend.markdown import fmt, pct
from ls_backend.stats import PairedComparison, bootstrap_mean_difference_ci, relative_change, wilcoxon_paired

ALPHA = 0.05
"""Significance level of every verdict."""


@dataclass
class Comparison:
    """A paired comparison ``a`` vs ``b`` (lower is better for ACE, higher for F1), with its evidence."""

    name: str
    a_label: str
    b_label: str
    a: np.ndarray
    b: np.ndarray
    test: PairedComparison
    ci: tuple[float, float]
    unit: str  # what one pair is
    coarse: PairedComparison | None = None  # the same comparison on per-task means
    coarse_unit: str = ""

    @property
    def relative(self) -> float:
        return relative_change(float(self.a.mean()), float(self.b.mean()))


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as measured here; ``comparison`` is None when it could not be measured."""

    id: str
    statement: str
    paper: str  # the paper's number
    comparison: Comparison | None
    ours: str  # our number, as text
    verdict: str

    @property
    def holds(self) -> bool:
        return self.verdict.startswith("holds")


@dataclass(frozen=True)
class ClaimEvidence:
    """What the claims are tested on: the binary tasks' calibration experiment and Table 3."""

    experiment: CalibrationExperiment
    table3: Table3
    binary: Sequence[str]
    best_at_max: Mapping[str, str]  # per LLM, the best in-task scenario at the most shots (Table 2)


def compare(
    name: str, a_label: str, b_label: str, a: np.ndarray, b: np.ndarray, unit: str, settings: Settings,
    coarse: tuple[np.ndarray, np.ndarray, str] | None = None,
) -> Comparison:  # fmt: skip
    """The paired test of ``a`` against ``b`` over the pairs where both are finite (and of the coarser pairs)."""
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    test = wilcoxon_paired(a, b)
    ci = bootstrap_mean_difference_ci(a, b, n_resamples=settings.bootstrap_resamples, seed=settings.seed)
    coarse_test, coarse_unit = None, ""
    if coarse is not None:
        ca, cb, coarse_unit = coarse
        ok = np.isfinite(ca) & np.isfinite(cb)
        coarse_test = wilcoxon_paired(ca[ok], cb[ok])
    return Comparison(name, a_label, b_label, a, b, test, ci, unit, coarse_test, coarse_unit)


def verdict(comparison: Comparison, want_lower: bool) -> str:
    """ "holds" when ``a`` moves the claimed way with p < ALPHA, and so do the coarser pairs' means (per-task means:
    repeats of one task are not independent evidence) where there are any; else what the tests say."""
    right_way = comparison.test.mean_difference < 0 if want_lower else comparison.test.mean_difference > 0
    significant = comparison.test.p_value < ALPHA
    coarse = comparison.coarse
    if right_way and significant and coarse is not None:
        coarse_right_way = coarse.mean_difference < 0 if want_lower else coarse.mean_difference > 0
        if not (coarse_right_way and coarse.p_value < ALPHA):
            return "same direction; significant over repeats, not over per-task means"
    if right_way and significant:
        return "holds"
    if right_way:
        return "same direction, not significant"
    if significant:
        return "does not hold (significantly the other way)"
    return "does not hold (no significant difference)"


def in_task_pairs(
    experiment: CalibrationExperiment, sampler: str, baseline: str, shots: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ACE pairs (task x repeat) of ``sampler`` vs ``baseline`` over LLMs, shots and calibrators, and the same
    averaged per (LLM, task)."""
    a, b = [], []
    per_task: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    calibrators = experiment.config["calibrators"]
    for llm in experiment.llms:
        for k in shots or experiment.config["shots"]:
            for cal in calibrators:
                ours = experiment.values[llm].get(Scenario("in-task", cal, k, sampler).key, {})
                theirs = experiment.values[llm].get(Scenario("in-task", cal, k, baseline).key, {})
                for task in experiment.tasks:
                    if task in ours and task in theirs:
                        n = min(len(ours[task]), len(theirs[task]))
                        a += ours[task][:n]
                        b += theirs[task][:n]
                        entry = per_task.setdefault((llm, task), ([], []))
                        entry[0].extend(ours[task][:n])
                        entry[1].extend(theirs[task][:n])
    ca = np.array([np.mean(v[0]) for _, v in sorted(per_task.items())])
    cb = np.array([np.mean(v[1]) for _, v in sorted(per_task.items())])
    return np.array(a), np.array(b), ca, cb


def scenario_task_pairs(experiment: CalibrationExperiment, a_key: Callable[[str], str | None],
                        b_key: Callable[[str], str | None]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per (LLM, task) means of two scenarios (the scenario keys may depend on the LLM)."""
    a, b = [], []
    for llm in experiment.llms:
        ka, kb = a_key(llm), b_key(llm)
        if ka is None or kb is None:
            continue
        ours, theirs = experiment.per_task(llm, ka), experiment.per_task(llm, kb)
        for task in experiment.tasks:
            if task in ours and task in theirs:
                a.append(ours[task])
                b.append(theirs[task])
    return np.array(a), np.array(b)


def build_claims(evidence: ClaimEvidence, settings: Settings) -> tuple[list[Claim], list[Comparison]]:
    """The headline claims (1: calibration lowers ACE; 2: SE and IE beat U; 3: the calibrated cascade beats
    weighted majority vote at under half its cost) and every comparison behind them and beside them."""
    experiment, table3, binary, best_at_max = (
        evidence.experiment, evidence.table3, list(evidence.binary), evidence.best_at_max
    )  # fmt: skip
    max_shots = max(settings.shots)
    claims: list[Claim] = []
    comparisons: list[Comparison] = []

    # Claim 1: in-task calibration with the most shots (the paper: 100) lowers ACE by 46%.
    a, b = scenario_task_pairs(experiment, lambda llm: best_at_max.get(llm), lambda llm: UNCALIBRATED)
    if a.size:
        c1 = compare(f"best in-task method at {max_shots} shots vs uncalibrated (Table 2)", "calibrated",
                     "uncalibrated", a, b, "(LLM, task) mean over repeats", settings)  # fmt: skip
        comparisons.append(c1)
        claims.append(Claim("1", f"Calibration with {max_shots} labeled in-task items lowers ACE",
                            "-46% (100 shots)", c1,
                            f"{pct(c1.relative)} mean ACE ({fmt(c1.b.mean())} -> {fmt(c1.a.mean())})",
                            verdict(c1, want_lower=True)))  # fmt: skip
    else:
        claims.append(
            Claim("1", "Calibration lowers ACE", "-46% (100 shots)", None, "not measured", "not measured")
        )

    # Claim 2: SE and IE sampling beat uniform sampling by about 10%.
    for sampler in ("SE", "IE"):
        a, b, ca, cb = in_task_pairs(experiment, sampler, "U")
        if not a.size:
            claims.append(Claim("2", f"{sampler} beats U", "~-10%", None, "not measured", "not measured"))
            continue
        c2 = compare(f"{sampler} vs U (all shots, ST and SV)", sampler, "U", a, b,
                     "(LLM, task, shots, calibrator, repeat)", settings,
                     coarse=(ca, cb, "(LLM, task) mean over shots, calibrators, repeats"))  # fmt: skip
        comparisons.append(c2)
        claims.append(Claim("2", f"In-task sampling {sampler} gives lower ACE than uniform sampling U", "~-10%", c2,
                            f"{pct(c2.relative)} mean ACE ({fmt(c2.b.mean())} -> {fmt(c2.a.mean())})",
                            verdict(c2, want_lower=True)))  # fmt: skip

    # Claim 3: the calibrated cascade is more accurate than weighted majority vote at < 1/2 of its cost.
    cal = settings.cascade_calibrator
    cascade, wmv = CASCADE_CAL.format(cal=cal), WMV_CAL.format(cal=cal)
    for bins in sorted(settings.cascade_bins, reverse=True):
        a = table3.pairs(bins, cascade, "f1", binary)
        b = table3.pairs(bins, wmv, "f1", binary)
        c3 = compare(f"F1, {cascade} vs {wmv}, {bins} bins", "cascade", "weighted majority", a, b,
                     "(task, evaluation split)", settings,
                     coarse=(table3.task_means(bins, cascade, "f1", binary), table3.task_means(bins, wmv, "f1", binary),
                             "task mean over splits"))  # fmt: skip
        comparisons.append(c3)
        cost_ratio = float(
            table3.pairs(bins, cascade, "cost_per_item", binary).mean()
            / table3.pairs(bins, wmv, "cost_per_item", binary).mean()
        )
        f1_holds = verdict(c3, want_lower=False) == "holds"
        cheap = cost_ratio < 0.5
        f1_text = (
            "F1 significantly higher"
            if f1_holds
            else "F1 significantly lower"
            if c3.test.p_value < ALPHA
            else "F1 not significantly different"
        )
        cost_text = f"cost {'<' if cheap else '>='} 0.50x"
        overall = "holds" if f1_holds and cheap else "partly holds" if f1_holds or cheap else "does not hold"
        overall = f"{overall} ({f1_text}; {cost_text})"
        claims.append(Claim("3", f"The calibrated cascade ({bins} bins) is more accurate than weighted majority vote "
                            "at less than half its cost", "higher F1 at < 0.50x cost", c3,
                            f"F1 {fmt(c3.a.mean(), 3)} vs {fmt(c3.b.mean(), 3)} ({c3.test.mean_difference:+.3f}) "
                            f"at {cost_ratio:.2f}x its cost", overall))  # fmt: skip

    # Supporting comparisons (not headline claims).
    for setting_a, setting_b in (("SIM-OOT", "ALL-OOT"),):
        for cal_name in experiment.config["calibrators"]:
            ka, kb = f"{setting_a}/{cal_name}", f"{setting_b}/{cal_name}"
            if ka in experiment.scenarios and kb in experiment.scenarios:
                a, b = scenario_task_pairs(experiment, lambda llm, k=ka: k, lambda llm, k=kb: k)  # type: ignore[misc]
                if a.size:
                    comparisons.append(compare(f"ACE, {ka} vs {kb}", ka, kb, a, b, "(LLM, task)", settings))
    for cal_name in experiment.config["calibrators"]:
        ka = f"SIM-OOT/{cal_name}" if f"SIM-OOT/{cal_name}" in experiment.scenarios else f"ALL-OOT/{cal_name}"
        if ka in experiment.scenarios:
            a, b = scenario_task_pairs(experiment, lambda llm, k=ka: k, lambda llm: UNCALIBRATED)  # type: ignore[misc]
            if a.size:
                comparisons.append(
                    compare(f"ACE, {ka} vs uncalibrated", ka, "uncalibrated", a, b, "(LLM, task)", settings)
                )
    bins = max(settings.cascade_bins)
    a = table3.pairs(bins, cascade, "f1", binary)
    b = table3.pairs(bins, "cascade (uncalibrated)", "f1", binary)
    comparisons.append(compare(f"F1, {cascade} vs cascade (uncalibrated), {bins} bins", "calibrated", "uncalibrated",
                               a, b, "(task, evaluation split)", settings))  # fmt: skip
    comparisons.append(compare(f"accuracy, {cascade} vs {wmv}, {bins} bins", "cascade", "weighted majority",
                               table3.pairs(bins, cascade, "accuracy", binary),
                               table3.pairs(bins, wmv, "accuracy", binary), "(task, evaluation split)",
                               settings))  # fmt: skip
    return claims, comparisons
