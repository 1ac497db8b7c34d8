"""The README and docs say what the committed results say: the headline is copied verbatim from docs/results.md,
and docs/results.md was generated from the committed scores and costs (its sha256s match the files)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ls_backend.data import BENCHMARK

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "docs" / "results.md"


def section(text: str, heading: str) -> str:
    """The lines under ``heading`` up to the next heading of the same or a higher level."""
    level = heading.split(" ")[0]
    match = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^#{{1,{len(level)}}} |\Z)", text, flags=re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def claim_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("- **Claim ")]


def test_readme_states_the_headline_exactly_as_the_results_have_it() -> None:
    results = RESULTS.read_text(encoding="utf-8")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    expected = claim_lines(section(results, "## Headline"))
    assert len(expected) == 5
    assert claim_lines(section(readme, "## Results on the public benchmark")) == expected
    assert "(docs/results.md)" in readme


def test_results_were_generated_from_the_committed_scores_and_costs() -> None:
    results = RESULTS.read_text(encoding="utf-8")
    for name in ("scores.jsonl.gz", "costs.json"):
        digest = hashlib.sha256((BENCHMARK / name).read_bytes()).hexdigest()
        assert re.search(rf"`ls_backend/data/benchmark/{re.escape(name)}`,? \(?sha256 `{digest}`", results), (
            name
        )
    assert "**Quick mode**" not in results
    for figure in re.findall(r"\]\((figures/[^)]+)\)", results):
        assert (RESULTS.parent / figure).exists(), figure


def test_the_served_defaults_are_the_ones_the_benchmark_chose() -> None:
    """docs/results.md's answer study picks a recipe before labels and a calibrator with 50 labels, and the
    measured number of items batch calibration needs: the packaged defaults are those."""
    from ls_backend.loop.trainer import LoopConfig
    from ls_backend.server.config import CascadeSettings

    results = RESULTS.read_text(encoding="utf-8")
    chosen = re.search(
        r"Chosen by the score: \*\*(\w+)/(\w+)/(\w+)\*\* before labels; .*? is \*\*(\w+)\*\*\.", results
    )
    assert chosen, "no choice in docs/results.md"
    correction, calibrator, answer, in_task = chosen.groups()
    defaults, loop = CascadeSettings(), LoopConfig()
    assert (defaults.correction, defaults.calibrator, defaults.answer) == (correction, calibrator, answer)
    assert loop.calibrator == in_task and loop.answer in (None, answer)
    needed = re.search(r"from \*\*(\d+)\*\* items on", results)
    if correction == "BC":
        assert needed and defaults.bc_min_items == int(needed.group(1))


def test_readme_states_the_answer_headline_exactly_as_the_results_have_it() -> None:
    results = RESULTS.read_text(encoding="utf-8")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    expected = [
        line for line in section(results, "## Headline").splitlines() if line.startswith("- **Answers ")
    ]
    assert len(expected) == 2
    assert [line for line in readme.splitlines() if line.startswith("- **Answers ")] == expected


def test_the_packaged_prompts_are_the_ones_the_prompt_study_chose() -> None:
    import json

    from ls_backend.llms.packaged import PACKAGED_MODELS

    study = json.loads((BENCHMARK / "prompt_study.json").read_text(encoding="utf-8"))
    assert set(study["llms"]) == set(PACKAGED_MODELS)
    for name, result in study["llms"].items():
        chosen = next(v for v in result["variants"] if v["name"] == result["chosen"])
        assert PACKAGED_MODELS[name].prompt == chosen["prompt"], name
        assert PACKAGED_MODELS[name].few_shot == chosen["few_shot"], name


def test_the_loop_cost_weight_is_the_one_its_study_chose() -> None:
    from ls_backend.loop.trainer import COST_WEIGHT

    table = (REPO_ROOT / "docs" / "benchmark" / "cost_weight.md").read_text(encoding="utf-8")
    chosen = re.findall(r"^\| ([0-9.]+) \(chosen\) \|", table, flags=re.M)
    assert chosen == [f"{COST_WEIGHT:g}"]
