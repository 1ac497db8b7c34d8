"""The report's prose: the answer-quality headline and the discussion generated from the computed values only
(no number is typed by hand here)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ls_backend.benchmark.diagnostics import positive_index
from ls_backend.benchmark.table3 import CASCADE_CAL, frontier_at_half_vote
from ls_backend.ensemble.classification import precision_recall_f1
from ls_backend.experiments import UNCALIBRATED
from ls_backend.markdown import pct, pval

if TYPE_CHECKING:
    from ls_backend.benchmark.report import Report


def answer_headline_lines(report: Report) -> list[str]:
    """The answer-quality headline: the served cascade's accuracy over the balanced binary tasks before any label
    and with 50, its cost, the natural-ratio F1 of yes, the best single LLM and the supervised anchor."""
    h = report.answer_headline
    if not h:
        return []
    natural = (
        f"; F1 of yes on the natural-ratio tasks {h['served_natural_f1_0']:.3f} (paper's method: "
        f"{h['paper_natural_f1_0']:.3f})"
        if math.isfinite(h["served_natural_f1_0"])
        else ""
    )
    lines = [
        f"- **Answers before any in-task label**: the served cascade's mean accuracy over the {len(report.binary)} "
        f"balanced binary tasks is {h['served_accuracy_0']:.3f} (the paper's method as the product ran it: "
        f"{h['paper_accuracy_0']:.3f}) at {h['served_cost_ratio_0']:.2f}x the cost of asking all three LLMs"
        f"{natural}."
    ]
    if "served_accuracy_50" in h:
        anchor = h.get("anchor_accuracy_50", float("nan"))
        anchor_text = (
            f"; logistic regression on MiniLM embeddings of the same 50 labels {anchor:.3f}"
            if math.isfinite(anchor)
            else ""
        )
        lines.append(
            f"- **Answers with 50 in-task labels**: {h['served_accuracy_50']:.3f} at {h['served_cost_ratio_50']:.2f}x "
            f"the cost of all three (best single LLM {h['best_single_accuracy_50']:.3f}{anchor_text})."
        )
    return lines


def generated_discussion(report: Report) -> str:
    """Sentences built from the computed values only (no number is typed by hand here)."""
    s = report.settings
    t3 = report.table3
    experiment = report.calib.experiment
    lines = []
    agree = [f"claim {c.id} ({c.statement})" for c in report.claims if c.holds]
    differ = [f"claim {c.id} ({c.statement}: {c.verdict})" for c in report.claims if not c.holds]
    lines.append(
        f"- Where we agree with the paper: {'; '.join(agree) if agree else 'none of the three claims'}."
    )
    lines.append(f"- Where we do not: {'; '.join(differ) if differ else 'none'}.")
    for claim in report.claims:
        c = claim.comparison
        if c is not None and claim.id in ("1", "2"):
            lines.append(f"- Size, claim {claim.id} ({c.a_label} vs {c.b_label}): ours {pct(c.relative)}, "
                         f"the paper's {claim.paper}.")  # fmt: skip
    # Evidence: how good and how miscalibrated each LLM is, what the cost structure allows.
    for llm in report.llms:
        d = report.diagnostics[llm]
        acc, aucs, yes_rate = float(d.accuracy.mean()), d.auc, float(d.yes_rate.mean())
        uncal = experiment.summary(llm, UNCALIBRATED)
        pooled = report.pooled_aces.get(llm)
        text = (f"- `{llm}`: mean accuracy {acc:.3f} on the binary tasks, answering yes to {yes_rate:.3f} of the "
                f"items; its yes-minus-no logit margin ranks them with mean AUC {float(np.nanmean(aucs)):.3f} "
                f"(AUC >= 0.7 on {int(np.sum(aucs >= 0.7))} of {aucs.size} tasks, < 0.5 on "
                f"{int(np.sum(aucs < 0.5))})")  # fmt: skip
        if uncal is not None:
            text += f", mean uncalibrated ACE {uncal['mean']:.4f}"
        if pooled is not None:
            text += f"; pooled over tasks, its best in-task calibration moves ACE from {pooled[0]:.4f} to {pooled[1]:.4f}"
        lines.append(text + ".")
    lines.append(f"- ACE has a noise floor: a perfectly calibrated LLM with these score distributions, measured "
                 f"on as many held-out items as the in-task cells use, shows a mean ACE of {report.noise_floor:.4f} "
                 f"({s.ace_bins} bins). Calibrated values near it cannot improve further; reductions relative to the "
                 "uncalibrated ACE are bounded by it.")  # fmt: skip
    costs = {
        m: float(np.mean(np.concatenate([t.costs[t.llm_index(m)] for t in report.table])))
        for m in report.llms
    }
    total = sum(costs.values())
    ratios = " : ".join(f"{costs[m] / costs[report.llms[0]]:.2f}" for m in report.llms)
    floor_ratio = costs[report.llms[0]] / total
    room = (
        "so a cascade can be under half of its cost only by stopping early on most items"
        if floor_ratio < 0.5
        else "so no cascade can cost less than half of it: the cost part of claim 3 is out of reach here"
    )
    lines.append(f"- Cost structure: the LLMs cost {ratios} (cheapest first). Weighted majority vote asks all of "
                 f"them and costs {total / costs[report.llms[0]]:.2f}x the cheapest LLM; a cascade that always stops "
                 f"at the cheapest LLM costs {floor_ratio:.2f}x weighted majority vote, {room}.")  # fmt: skip
    bins = max(s.cascade_bins)
    cascade = CASCADE_CAL.format(cal=s.cascade_calibrator)
    fractions = t3.mean_depth(bins, cascade, report.binary)
    if fractions is not None:
        lines.append(f"- The calibrated cascade ({bins} bins) stopped after 1/2/3 LLMs on "
                     + " / ".join(f"{x:.2f}" for x in fractions) + " of the binary test items.")  # fmt: skip
    always_yes = [
        float(precision_recall_f1(t.labels[t.labeled], np.full(int(t.labeled.sum()), positive_index(t)), 2,
                                  positive_index(t))["f1"])
        for t in (report.table[name] for name in report.binary)
    ]  # fmt: skip
    accuracy_check = next((c for c in report.comparisons if c.name.startswith("accuracy, ")), None)
    text = (f"- F1 of yes is not symmetric: always answering yes scores a mean F1 of "
            f"{float(np.mean(always_yes)):.3f} on these binary tasks, answering no scores 0; ")  # fmt: skip
    if accuracy_check is not None:
        text += (f"by accuracy, which treats both answers alike, {accuracy_check.name} is "
                 f"{float(np.mean(accuracy_check.a)):.3f} vs {float(np.mean(accuracy_check.b)):.3f} "
                 f"(p {pval(accuracy_check.test.p_value)}, {accuracy_check.test.n_pairs} pairs).")  # fmt: skip
    lines.append(text)
    half = frontier_at_half_vote(t3, report.binary, s.cascade_calibrator)
    if half is not None:
        lines.append(f"- The cost-aware cascade (lambda sweep, {max(s.cascade_bins)} bins, first evaluation split): "
                     "the policy each binary task picks on its training items within half of weighted majority "
                     f"vote's cost reaches a mean test F1 of {half.f1:.3f} at {half.relative_cost:.2f}x the cheapest "
                     f"LLM, against the vote's {half.vote_f1:.3f} at {half.vote_relative_cost:.2f}x ({half.n_tasks} "
                     "tasks; one split, so no test).")  # fmt: skip
    for comparison in report.comparisons:
        if "SV argmax" in comparison.name:
            lines.append(f"- Beyond the paper: {comparison.name}: mean {float(np.mean(comparison.b)):.3f} -> "
                         f"{float(np.mean(comparison.a)):.3f} over {comparison.test.n_pairs} (LLM, task) pairs, "
                         f"p {pval(comparison.test.p_value)}.")  # fmt: skip
    best_single = max(report.llms, key=lambda m: float(t3.pairs(bins, m, "f1", report.binary).mean()))
    lines.append(f"- The best single LLM by F1 is `{best_single}` "
                 f"({float(t3.pairs(bins, best_single, 'f1', report.binary).mean()):.3f}); the calibrated cascade "
                 f"reaches {float(t3.pairs(bins, cascade, 'f1', report.binary).mean()):.3f}.")  # fmt: skip
    return "\n".join(lines)
