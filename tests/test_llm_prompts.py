"""Prompt templates (rendering, validation, hashing, round trips), the cost model and ScoredBatch."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ls_backend.llms import DEFAULT_TEMPLATE, CostModel, PromptError, PromptTemplate, ScoredBatch
from ls_backend.llms.packaged import PACKAGED_MODELS
from ls_backend.llms.prompts import TRUNCATION_MARK
from ls_backend.tasks import TaskSpec

SPAM = PromptTemplate("Is this SMS spam?", ("yes", "no"))


def test_plain_rendering_puts_examples_then_item_with_answer_cue() -> None:
    prompt = SPAM.replace(examples=[["WIN now", "yes"], ["lunch?", "no"]], system="You label texts.")
    rendered = prompt.render_plain("hello")
    blocks = rendered.split("\n\n")
    assert blocks[0] == "You label texts."
    assert rendered.index("WIN now") < rendered.index("lunch?") < rendered.index("hello")
    assert "Answer: yes" in rendered and "Answer: no" in rendered
    assert rendered.endswith("Text: hello\n\nAnswer with one of: yes, no.\nAnswer:")


def test_chat_messages_alternate_user_and_assistant() -> None:
    prompt = SPAM.replace(examples=[["WIN now", "yes"]], system="sys", chat=True)
    messages = prompt.render_messages("hello")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == "yes"
    assert messages[-1]["content"] == prompt.render_item("hello")
    assert [m["role"] for m in SPAM.render_messages("x")] == ["user"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"template": "{question} {txt}"}, "unknown placeholder {txt}"),
        ({"template": "{question} Answer:"}, "{text}"),
        ({"template": "{} {text}"}, "empty placeholder"),
        ({"template": "{text:>10}"}, "format spec"),
        ({"template": "{text} {"}, "malformed"),
        ({"examples": (("a text", "maybe"),)}, "not one of"),
        ({"examples": ("a text",)}, "pair"),
        ({"question": "  "}, "question"),
        ({"classes": ("yes",)}, "at least 2"),
        ({"classes": ("yes", "yes")}, "distinct"),
        ({"classes": "yes,no"}, "list of class names"),
        ({"max_text_chars": 0}, "max_text_chars"),
        ({"chat": "yes"}, "chat"),
    ],
)
def test_bad_templates_raise_clear_errors(fields: dict, message: str) -> None:
    base = {"question": "Is it?", "classes": ("yes", "no")}
    with pytest.raises(PromptError, match=message.replace("{", r"\{").replace("}", r"\}")):
        PromptTemplate(**{**base, **fields})
    assert issubclass(PromptError, ValueError)


def test_literal_braces_survive() -> None:
    prompt = SPAM.replace(template='Reply as JSON {{"answer": ...}}. {question} {text} Answer:')
    assert prompt.render_item("hi").startswith('Reply as JSON {"answer": ...}. Is this SMS spam? hi')


def test_truncation_keeps_the_beginning_and_the_answer_cue() -> None:
    prompt = SPAM.replace(max_text_chars=10)
    rendered = prompt.render_plain("0123456789abcdefghij")
    assert "Text: 0123456789" + TRUNCATION_MARK + "\n" in rendered
    assert "abc" not in rendered and rendered.endswith("Answer:")
    assert prompt.truncate("short") == "short"


def test_dict_round_trip_hash_and_from_task() -> None:
    prompt = SPAM.replace(examples=[["WIN", "yes"]], system="s", chat=True, max_text_chars=50)
    again = PromptTemplate.from_dict(prompt.to_dict())
    assert again == prompt and again.hash() == prompt.hash()
    assert len(prompt.hash()) == 64 and prompt.hash() != SPAM.hash()
    assert SPAM.replace(system="other").hash() != SPAM.replace(system="s").hash()
    task = TaskSpec("spam", "Is this SMS spam?", ("yes", "no"))
    assert PromptTemplate.from_task(task) == SPAM
    assert PromptTemplate.from_task(task, chat=True).chat
    assert SPAM.template == DEFAULT_TEMPLATE
    with pytest.raises(PromptError, match="unknown field"):
        PromptTemplate.from_task(task, temperature=0.0)
    with pytest.raises(PromptError, match="unknown field"):
        PromptTemplate.from_dict({**SPAM.to_dict(), "shots": 2})
    with pytest.raises(PromptError, match="missing"):
        PromptTemplate.from_dict({"question": "q"})


def test_hash_is_stable_across_processes() -> None:
    # a fixed value: the score cache keys on it, so it must not depend on dict order or the interpreter run
    expected = PromptTemplate.from_dict(
        {"question": "q", "classes": ["a", "b"], "chat": False, "examples": [], "system": None}
    ).hash()
    assert PromptTemplate("q", ("a", "b")).hash() == expected


@given(st.text(max_size=300), st.integers(min_value=1, max_value=100))
def test_any_text_renders_with_its_truncated_text_and_the_cue(text: str, max_chars: int) -> None:
    prompt = SPAM.replace(max_text_chars=max_chars)
    rendered = prompt.render_plain(text)
    assert rendered.endswith("\nAnswer:")
    assert prompt.truncate(text) in rendered
    assert len(prompt.truncate(text)) <= max_chars + len(TRUNCATION_MARK)


def test_cost_model_units() -> None:
    seconds, tokens_in, tokens_out = np.array([0.5, 1.5]), np.array([100, 300]), np.array([1, 2])
    np.testing.assert_allclose(CostModel().cost(seconds, tokens_in, tokens_out), seconds)
    np.testing.assert_allclose(
        CostModel("per_call", per_call=0.01).cost(seconds, tokens_in, tokens_out), 0.01
    )
    priced = CostModel("per_token", per_call=1.0, per_input_token=0.001, per_output_token=0.1)
    np.testing.assert_allclose(priced.cost(seconds, tokens_in, tokens_out), [1.2, 1.5])
    assert CostModel.from_dict(priced.to_dict()) == priced
    with pytest.raises(ValueError, match="unknown unit"):
        CostModel("dollars")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        CostModel(per_call=-1.0)
    with pytest.raises(ValueError, match="shape"):
        CostModel().cost(seconds, tokens_in[:1], tokens_out)


def test_scored_batch_validates_and_concatenates() -> None:
    a = ScoredBatch(
        np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.1, 0.2]), {"seconds": 0.3}
    )
    b = ScoredBatch(np.array([1]), np.array([[0.0, 1.0]]), np.array([0.4]), {"seconds": 0.4})
    joined = ScoredBatch.concatenate([a, b])
    assert len(joined) == 3 and joined.logits.dtype == np.float64 and joined.answers.dtype == np.int64
    assert joined.meta["seconds"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="shape"):
        ScoredBatch(np.array([0]), np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="class indices"):
        ScoredBatch(np.array([2]), np.array([[1.0, 0.0]]), np.array([0.1]))
    with pytest.raises(ValueError, match="NaN"):
        ScoredBatch(np.array([0]), np.array([[np.nan, 0.0]]), np.array([0.1]))
    with pytest.raises(ValueError, match="costs"):
        ScoredBatch(np.array([0]), np.array([[1.0, 0.0]]), np.array([-0.1]))


def test_few_shot_takes_the_tasks_examples_per_class() -> None:
    from ls_backend.llms.config import LLMConfig, LLMConfigError

    task = TaskSpec(
        "t",
        "Spam?",
        ("yes", "no"),
        examples=(("win cash", "yes"), ("win a car", "yes"), ("hi mum", "no")),
    )
    one = LLMConfig.from_dict({"name": "a", "kind": "hf", "model": "x", "few_shot": 1})
    assert one.prompt_for(task).examples == (("win cash", "yes"), ("hi mum", "no"))
    zero = LLMConfig.from_dict({"name": "b", "kind": "hf", "model": "x"})
    assert zero.prompt_for(task).examples == ()
    gemma = LLMConfig.from_dict({"name": "g", "kind": "packaged", "model": "gemma3-270m"})
    # the packaged model's recommended number of examples per class (Gemma is a base model)
    assert gemma.few_shot == PACKAGED_MODELS["gemma3-270m"].few_shot == 2
    assert gemma.prompt_for(task).examples == (("win cash", "yes"), ("win a car", "yes"), ("hi mum", "no"))
    assert gemma.prompt_for(task, examples=[("given", "no")]).examples == (("given", "no"),)
    with pytest.raises(LLMConfigError, match="few_shot"):
        LLMConfig.from_dict({"name": "c", "kind": "hf", "model": "x", "few_shot": -1})
