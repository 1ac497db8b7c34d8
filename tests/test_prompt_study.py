"""The prompt study's grid, subsample, metrics and choice rule (the scoring itself runs in scripts/prompt_study.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ls_backend.benchmark.prompt_study import (
    INSTRUCT_FACTORS,
    PromptVariant,
    base_variants,
    choose_variant,
    confirmation_variant,
    instruct_variants,
    main_effects,
    study_items,
    study_llm,
    study_markdown,
    task_quality,
    variant_config,
)
from ls_backend.llms.prompts import DEFAULT_TEMPLATE, PromptError, PromptTemplate
from ls_backend.tasks import TaskSpec

TASK = TaskSpec(
    "spam", "Is this spam?", ("yes", "no"), "d", (("WIN", "yes"), ("hi", "no"), ("CASH", "yes"), ("ok", "no"))
)
PACKAGED_CHAT = {"name": "q", "kind": "packaged", "model": "qwen2.5-coder-0.5b-instruct"}
PACKAGED_BASE = {"name": "g", "kind": "packaged", "model": "gemma3-270m"}


def test_the_instruct_grid_is_a_resolution_iv_half_fraction_that_holds_the_former_default() -> None:
    variants = instruct_variants()
    assert len(variants) == len({v.name for v in variants}) == 8
    signs = np.array([[1 if v.factors[f] in ("message", "named", "after text", "Answer:") else -1
                       for f in INSTRUCT_FACTORS] for v in variants])  # fmt: skip
    assert (signs.prod(axis=1) == 1).all()  # defining relation I = ABCD
    assert (signs.sum(axis=0) == 0).all()  # balanced: every level in half of the runs
    assert (signs.T @ signs == 8 * np.eye(4)).all()  # orthogonal main effects
    former = PromptTemplate.from_task(TASK, chat=True)
    assert any(variant_config(PACKAGED_CHAT, v).prompt_for(TASK) == former for v in variants)
    assert former.template == DEFAULT_TEMPLATE


def test_instruct_prompts_put_the_question_where_the_factors_say() -> None:
    by_name = {v.name: v for v in instruct_variants()}
    after = variant_config(PACKAGED_CHAT, by_name["chat-S1C1P1A1"]).prompt_for(TASK).render_messages("TXT")
    assert after[0] == {
        "role": "system",
        "content": "You are a text classifier. Answer with one of: yes, no.",
    }
    assert after[1]["content"] == "Text: TXT\n\nIs this spam?\nAnswer:"
    before = variant_config(PACKAGED_CHAT, by_name["chat-S0C0P0A0"]).prompt_for(TASK).render_messages("TXT")
    assert before == [{"role": "user", "content": "Is this spam?\n\nText: TXT\n\nAnswer with one word."}]


def test_base_grid_counts_shots_and_formats() -> None:
    variants = base_variants()
    assert len(variants) == 9
    compact = next(v for v in variants if v.name == "plain-2shot-compact")
    prompt = variant_config(PACKAGED_BASE, compact).prompt_for(TASK)
    assert len(prompt.examples) == 4
    text = prompt.render_plain("TXT")
    assert text.startswith("Is this spam?\nAnswer with one of: yes, no.\n\nText: WIN\nAnswer: yes")
    assert text.count("Is this spam?") == 1 and text.endswith("Text: TXT\nAnswer:")
    former = variant_config(PACKAGED_BASE, next(v for v in variants if v.name == "plain-1shot-q-before"))
    assert former.prompt_for(TASK) == PromptTemplate.from_task(TASK, examples=TASK.examples[:2])


def test_system_text_placeholders() -> None:
    prompt = PromptTemplate.from_task(TASK, system="Q: {question} / {classes}", chat=True)
    assert prompt.render_messages("t")[0]["content"] == "Q: Is this spam? / yes, no"
    with pytest.raises(PromptError, match=r"system text has unknown placeholder \{text\}"):
        PromptTemplate.from_task(TASK, system="{text}")
    with pytest.raises(PromptError, match="system text is malformed"):
        PromptTemplate.from_task(TASK, system="a { b")


def test_confirmation_runs_the_cell_the_main_effects_predict_when_it_is_missing() -> None:
    variants = instruct_variants()
    # the best predicted cell (a system message, named classes, question after, no cue) is outside the fraction
    quality = {v.name: 0.5 + 0.1 * (v.factors["position"] == "after text") + 0.05 * (v.factors["classes"] == "named")
               + 0.01 * (v.factors["system"] == "message") + 0.01 * (v.factors["cue"] == "none") for v in variants}  # fmt: skip
    extra = confirmation_variant(quality, variants)
    assert extra is not None and dict(extra.factors) == {
        "system": "message", "classes": "named", "position": "after text", "cue": "none"
    }  # fmt: skip
    assert extra.name not in {v.name for v in variants}
    effects = main_effects(quality, [v.to_dict() for v in variants])
    assert effects["position"] == pytest.approx(0.1) and effects["cue"] == pytest.approx(-0.01)
    assert confirmation_variant(quality, [*variants, extra]) is None
    assert confirmation_variant({v.name: 0.5 for v in base_variants()}, base_variants()) is None


def test_task_quality_is_auc_for_yes_no_and_mean_one_vs_rest_otherwise() -> None:
    logits = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    assert task_quality(logits, np.array([0, 1, 1, 0]), ("yes", "no")) == pytest.approx(0.75)
    assert task_quality(logits[:, ::-1], np.array([1, 0, 0, 1]), ("no", "yes")) == pytest.approx(0.75)
    multi = np.eye(3)[[0, 1, 2, 0]] * 3
    assert task_quality(multi, np.array([0, 1, 2, 0]), ("a", "b", "c")) == pytest.approx(1.0)


def test_study_items_are_the_first_labeled_items_half_yes() -> None:
    ids = [str(i) for i in range(10)]
    labels = ["no", "no", "no", None, "yes", "no", "yes", "yes", "yes", "no"]
    chosen = study_items({"t": (ids, ids, labels)}, {"t": ("yes", "no")}, 4)["t"]
    assert chosen.ids == ["0", "1", "4", "6"] and chosen.labels == [1, 1, 0, 0]


def test_the_choice_is_the_best_mean_quality_over_all_tasks_never_per_task() -> None:
    variants = [PromptVariant(n, {"shots": "0", "format": "f"}, {}, 0) for n in ("a", "b")]
    # b ranks t1 perfectly and t2 at chance; a ranks both well but not perfectly: a wins on the mean
    flips = {("a", "t1"): 2, ("a", "t2"): 2, ("b", "t1"): 0, ("b", "t2"): 5}

    def score(variant, task, texts):
        n = len(texts)
        labels = np.array([0, 1] * (n // 2))
        margin = np.where(labels == 0, 1.0, -1.0) + np.arange(n) * 1e-3
        swap = flips[variant.name, task]
        yes, no = np.flatnonzero(labels == 0)[:swap], np.flatnonzero(labels == 1)[:swap]
        margin[yes], margin[no] = -1.0 - np.arange(swap) * 1e-3, 1.0 + np.arange(swap) * 1e-3
        return (margin < 0).astype(int), np.stack([margin, np.zeros(n)], axis=1), np.full(n, 0.1)

    items = study_items({t: ([str(i) for i in range(20)],) * 2 + (["yes", "no"] * 10,) for t in ("t1", "t2")},
                        {"t1": ("yes", "no"), "t2": ("yes", "no")}, 20)  # fmt: skip
    result = study_llm(variants, {"t1": ("yes", "no"), "t2": ("yes", "no")}, items, score)
    means = {n: s["quality"] for n, s in result["summary"].items()}
    assert (
        means["a"] > means["b"]
        and result["per_task"]["b"]["t1"]["quality"] > result["per_task"]["a"]["t1"]["quality"]
    )
    assert result["chosen"] == choose_variant(result["summary"]) == "a"
    text = study_markdown(
        {"settings": {"per_task": 20, "tasks": ["t1", "t2"]}, "llms": {"m": result}}, {"m": "b"}
    )
    assert "**a**" in text and "former default `b`" in text
