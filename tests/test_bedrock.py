"""The Bedrock adapter: Converse calls, answer parsing, verifier confidence, retries and errors.

AWS cannot be reached from the test machines, so every remote call here goes through botocore's ``Stubber``
(responses in the documented Converse format, with the request parameters checked) or, for network timeouts and
missing credentials, through a real botocore client that fails before anything leaves the machine. The
verifier is a real local :class:`~ls_backend.llms.hf.HFLLM` (a tiny random LlamaForCausalLM saved and loaded
with ``save_pretrained``), so its P(yes) is real model output, not a fake.
"""

from __future__ import annotations

import boto3
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.confidence import softmax
from ls_backend.llms.base import CostModel
from ls_backend.llms.bedrock import BedrockLLM, confidence_logits, parse_answer
from ls_backend.llms.cache import ScoreCache
from ls_backend.llms.prompts import PromptTemplate
from ls_backend.llms.scoring import (
    RemoteAuthError,
    RemoteModelNotFoundError,
    RemoteRequestError,
    score_items,
)
from tests.tiny_models import save_sms_llama

MODEL_ID = "anthropic.claude-3-haiku-20240307-v1:0"
PROMPT = PromptTemplate(
    question="Is this SMS message spam?", classes=("yes", "no"), system="You label texts."
)
TOPIC = PromptTemplate(question="What is this about?", classes=("sport", "business", "tech"))


@pytest.fixture(scope="module")
def verifier_folder(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return save_sms_llama(tmp_path_factory.mktemp("verifier"), seed=1)


@pytest.fixture(scope="module")
def verifier(verifier_folder):
    from ls_backend.llms.hf import HFLLM

    return HFLLM.from_pretrained(str(verifier_folder), name="tiny-verifier", batch_size=8)


def make_client():
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="not-a-real-secret",
        config=Config(retries={"total_max_attempts": 1}),
    )


def converse_response(text: str, input_tokens: int = 20, output_tokens: int = 2) -> dict:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": {"latencyMs": 120},
    }


def make_llm(verifier, client, sleeps=None, **kwargs) -> BedrockLLM:
    # one worker: the Stubber answers in queue order, so calls must be made in item order
    return BedrockLLM(
        "haiku",
        MODEL_ID,
        verifier=verifier,
        client=client,
        max_workers=1,
        sleep=(sleeps.append if sleeps is not None else lambda s: None),
        **kwargs,
    )


# parsing -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "classes", "expected"),
    [
        ("Yes", ("yes", "no"), 0),
        ("Answer: Yes.", ("yes", "no"), 0),
        ("  NO!", ("yes", "no"), 1),
        ("The answer is no", ("yes", "no"), 1),
        ("**No**, it is a normal message.", ("yes", "no"), 1),
        ("No. Yes would be wrong.", ("yes", "no"), 1),
        ("I think yes", ("yes", "no"), 0),
        ("It is not spam.", ("spam", "not spam"), 1),
        ("Not spam", ("spam", "not spam"), 1),
        ("spam", ("spam", "not spam"), 0),
        ("Label: Business", ("sport", "business", "tech"), 1),
        ("I cannot tell.", ("yes", "no"), -1),
        ("yes or no, hard to say", ("yes", "no"), 0),
        ("hard to say: yes or no", ("yes", "no"), -1),
        ("", ("yes", "no"), -1),
        ("nothing", ("yes", "no"), -1),
    ],
)
def test_parse_answer(text, classes, expected):
    assert parse_answer(text, classes) == expected


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z]{2,8}", fullmatch=True), min_size=2, max_size=5, unique=True),
    st.data(),
)
def test_parse_answer_finds_a_decorated_class(classes, data):
    c = data.draw(st.integers(0, len(classes) - 1))
    case = data.draw(st.sampled_from([str.lower, str.upper, str.title]))
    prefix = data.draw(st.sampled_from(["", "Answer: ", "answer - ", "The answer is ", "  ", "**"]))
    suffix = data.draw(st.sampled_from(["", ".", "!", "**", "\n", ". Because reasons."]))
    assert parse_answer(prefix + case(classes[c]) + suffix, classes) in (c, -1)
    if not any(o != classes[c] and o.startswith(classes[c]) for o in classes):
        assert parse_answer(prefix + case(classes[c]) + suffix, classes) == c


# confidence -> logits ----------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20), st.data())
def test_confidence_logits_softmax_gives_back_the_confidence(n_classes, confidence, data):
    answers = np.array(
        data.draw(
            st.lists(st.integers(-1, n_classes - 1), min_size=len(confidence), max_size=len(confidence))
        )
    )
    p = np.array(confidence)
    logits = confidence_logits(answers, p, n_classes, floor=1e-6)
    probs = softmax(logits)
    parsed = answers >= 0
    clipped = np.clip(p, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(probs[parsed, answers[parsed]], clipped[parsed], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(probs[~parsed], 1.0 / n_classes)
    assert np.isfinite(logits).all()
    # the other classes share the rest evenly
    for i in np.flatnonzero(parsed):
        others = np.delete(probs[i], answers[i])
        np.testing.assert_allclose(others, (1 - clipped[i]) / (n_classes - 1), rtol=1e-9, atol=1e-12)


# scoring through the Stubber ----------------------------------------------------------------------------------
def test_score_matches_the_verifiers_p_yes(verifier):
    """Stubbed Converse responses; the confidence must equal the verifier's P(yes) asked directly."""
    texts = ["free prize call now", "hi how are you", "claim your prize"]
    replies = ["Yes", "Answer: No.", "yes, spam"]
    client = make_client()
    llm = make_llm(
        verifier, client, cost_model={"unit": "per_token", "per_input_token": 0.01, "per_output_token": 0.1}
    )
    with Stubber(client) as stub:
        for text, reply in zip(texts, replies, strict=True):
            stub.add_response(
                "converse", converse_response(reply, 20 + len(text), 2), llm.converse_request(text, PROMPT)
            )
        batch = llm.score(texts, PROMPT)
        stub.assert_no_pending_responses()
    np.testing.assert_array_equal(batch.answers, [0, 1, 0])
    # reference: ask the verifier directly, per proposed answer
    p_yes = np.zeros(3)
    for answer, items in (("yes", [0, 2]), ("no", [1])):
        verdict = verifier.score([texts[i] for i in items], llm.verifier_prompt_for(PROMPT, answer))
        p_yes[items] = softmax(verdict.logits)[:, 0]
    probs = softmax(batch.logits)
    np.testing.assert_allclose(probs[np.arange(3), batch.answers], p_yes, atol=1e-6)
    np.testing.assert_allclose(batch.meta["verifier_confidence"], p_yes, atol=1e-6)
    np.testing.assert_allclose(batch.costs, [0.01 * (20 + len(t)) + 0.2 for t in texts])
    assert batch.meta["raw_answers"] == replies and batch.meta["unparsed"] == [False] * 3


def test_converse_request_shape(verifier):
    llm = make_llm(verifier, make_client(), max_tokens=5)
    request = llm.converse_request("hi", PROMPT)
    assert request["modelId"] == MODEL_ID
    assert request["system"] == [{"text": "You label texts."}]
    assert request["messages"] == [{"role": "user", "content": [{"text": PROMPT.render_item("hi")}]}]
    assert request["inferenceConfig"] == {"maxTokens": 5, "temperature": 0.0}


def test_verifier_prompt_asks_yes_no_about_the_answer(verifier):
    llm = make_llm(verifier, make_client())
    vp = llm.verifier_prompt_for(TOPIC, "business")
    assert vp.classes == ("yes", "no") and vp.examples == ()
    assert "What is this about?" in vp.question and "Proposed answer: business" in vp.question


def test_unparseable_answer_gets_lowest_confidence_and_a_flag(verifier):
    client = make_client()
    llm = make_llm(verifier, client)
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response("Sport"))
        stub.add_response("converse", converse_response("I'd rather not say."))
        batch = llm.score(["a", "b"], TOPIC)
    assert batch.meta["unparsed"] == [False, True]
    assert batch.answers[1] == 0
    np.testing.assert_allclose(softmax(batch.logits[1:]), [[1 / 3, 1 / 3, 1 / 3]])
    assert batch.meta["verifier_confidence"][1] == 0.0


def test_multiclass_answers_are_verified_per_class(verifier):
    client = make_client()
    llm = make_llm(verifier, client)
    with Stubber(client) as stub:
        for reply in ("tech", "Business.", "TECH", "sport"):
            stub.add_response("converse", converse_response(reply))
        batch = llm.score(["a", "b", "c", "d"], TOPIC)
    np.testing.assert_array_equal(batch.answers, [2, 1, 2, 0])
    probs = softmax(batch.logits)
    np.testing.assert_allclose(
        probs[np.arange(4), batch.answers], batch.meta["verifier_confidence"], atol=1e-9
    )


def test_seconds_cost_and_added_verifier_cost(verifier):
    client = make_client()
    llm = make_llm(verifier, client, add_verifier_cost=True)
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response("yes"))
        batch = llm.score(["hi"], PROMPT)
    assert batch.costs[0] >= batch.meta["verifier_costs"][0] > 0
    with pytest.raises(ValueError, match="one cost unit"):
        make_llm(
            verifier, client, add_verifier_cost=True, cost_model=CostModel(unit="per_call", per_call=1.0)
        )


def test_second_run_through_the_cache_makes_no_converse_call(verifier):
    """A Stubber with an empty queue raises on any call: the cached run must not make one."""
    client = make_client()
    llm = make_llm(verifier, client)
    cache = ScoreCache(":memory:")
    with Stubber(client) as stub:
        stub.add_response("converse", converse_response("yes"))
        stub.add_response("converse", converse_response("no"))
        first = score_items(llm, PROMPT, ["x", "y"], cache=cache)
        second = score_items(llm, PROMPT, ["x", "y"], cache=cache)
        stub.assert_no_pending_responses()
    np.testing.assert_array_equal(first.logits, second.logits)
    assert second.meta["n_called"] == 0


def test_revision_names_the_verifier(verifier, tmp_path):
    llm = make_llm(verifier, make_client())
    assert llm.revision.startswith(MODEL_ID + "|verifier=tiny-verifier@")
    other = make_llm(verifier, make_client(), verifier_question="{question} Is '{answer}' right?")
    assert other.revision != llm.revision


# retries and errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code", ["ThrottlingException", "ServiceUnavailableException", "ModelTimeoutException"]
)
def test_transient_errors_are_retried_with_backoff(verifier, code):
    client = make_client()
    sleeps: list[float] = []
    llm = make_llm(verifier, client, sleeps, retry={"max_attempts": 4, "base_delay": 0.5, "max_delay": 8.0})
    with Stubber(client) as stub:
        stub.add_client_error(
            "converse", service_error_code=code, service_message="slow down", http_status_code=429
        )
        stub.add_client_error(
            "converse", service_error_code=code, service_message="slow down", http_status_code=429
        )
        stub.add_response("converse", converse_response("no"))
        batch = llm.score(["hi"], PROMPT)
        stub.assert_no_pending_responses()
    assert batch.answers.tolist() == [1]
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 1.0


def test_throttling_gives_up_after_max_attempts(verifier):
    client = make_client()
    sleeps: list[float] = []
    llm = make_llm(verifier, client, sleeps, retry={"max_attempts": 3})
    with Stubber(client) as stub:
        for _ in range(3):
            stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(RemoteRequestError, match="gave up after 3 attempts: ThrottlingException"):
            llm.score(["hi"], PROMPT)
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    ("code", "message", "error", "match"),
    [
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            RemoteAuthError,
            "credentials",
        ),
        ("AccessDeniedException", "You don't have access to the model", RemoteAuthError, "model access"),
        (
            "ExpiredTokenException",
            "The security token included in the request is expired",
            RemoteAuthError,
            "expired",
        ),
        (
            "ValidationException",
            "The provided model identifier is invalid.",
            RemoteModelNotFoundError,
            "no model",
        ),
        ("ResourceNotFoundException", "Model not found", RemoteModelNotFoundError, "no model"),
        ("ValidationException", "messages: text field is blank", RemoteRequestError, "rejected the request"),
    ],
)
def test_client_errors_raise_at_once_with_a_clear_message(verifier, code, message, error, match):
    client = make_client()
    sleeps: list[float] = []
    llm = make_llm(verifier, client, sleeps)
    with Stubber(client) as stub:
        stub.add_client_error(
            "converse", service_error_code=code, service_message=message, http_status_code=400
        )
        with pytest.raises(error, match=match):
            llm.score(["hi"], PROMPT)
    assert sleeps == []


def test_read_timeouts_are_retried(verifier):
    """No Stubber here: a real signed request is stopped at botocore's before-send hook with a ReadTimeoutError."""
    client = make_client()
    calls = []

    def time_out(request, **kwargs):
        calls.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    client.meta.events.register("before-send.bedrock-runtime.Converse", time_out)
    sleeps: list[float] = []
    llm = make_llm(verifier, client, sleeps, retry={"max_attempts": 3})
    with pytest.raises(RemoteRequestError, match="gave up after 3 attempts: Read timeout"):
        llm.score(["hi"], PROMPT)
    assert len(calls) == 3 and len(sleeps) == 2
    assert "bedrock-runtime.us-east-1" in calls[0] and "/converse" in calls[0]


def test_missing_credentials_is_a_clear_error(verifier, monkeypatch, tmp_path):
    """A real client with no credentials anywhere fails before sending anything."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    llm = BedrockLLM("haiku", MODEL_ID, verifier=verifier, region="us-east-1", max_workers=1)
    with pytest.raises(RemoteAuthError, match="no usable AWS credentials"):
        llm.score(["hi"], PROMPT)


def test_client_from_arguments_has_timeouts_and_no_botocore_retries(verifier):
    llm = BedrockLLM(
        "haiku", MODEL_ID, verifier=verifier, region="eu-west-1", connect_timeout=3, read_timeout=30
    )
    config = llm.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (3, 30)
    assert config.retries["total_max_attempts"] == 1
    assert llm.client.meta.region_name == "eu-west-1"


def test_constructor_rejects_bad_arguments(verifier):
    client = make_client()
    with pytest.raises(TypeError, match="verifier must be an LLM"):
        BedrockLLM("x", MODEL_ID, verifier=object(), client=client)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\{answer\}"):
        BedrockLLM("x", MODEL_ID, verifier=verifier, client=client, verifier_question="Is it right?")
    with pytest.raises(ValueError, match="verifier_prompt"):
        BedrockLLM("x", MODEL_ID, verifier=verifier, client=client, verifier_prompt={"classes": ["a", "b"]})
    with pytest.raises(ValueError, match="min_confidence"):
        BedrockLLM("x", MODEL_ID, verifier=verifier, client=client, min_confidence=0.7)


def test_built_from_an_llm_config_with_a_verifier_entry(verifier_folder):
    from ls_backend.llms.config import build_llms
    from ls_backend.llms.hf import HFLLM

    (llm,) = build_llms(
        [
            {
                "name": "haiku",
                "kind": "bedrock",
                "model_id": MODEL_ID,
                "region": "us-east-1",
                "verifier": {
                    "kind": "hf",
                    "model": str(verifier_folder),
                    "prompt": {"system": "Judge answers."},
                },
                "cost": {"unit": "per_token", "per_input_token": 2.5e-7, "per_output_token": 1.25e-6},
                "retry": {"max_attempts": 2},
            }
        ]
    )
    assert isinstance(llm, BedrockLLM) and isinstance(llm.verifier, HFLLM)
    assert llm.verifier.name == "haiku-verifier"
    assert llm.verifier_prompt == {"system": "Judge answers."}
    assert llm.verifier_prompt_for(PROMPT, "yes").system == "Judge answers."
    assert llm.cost_model == CostModel(unit="per_token", per_input_token=2.5e-7, per_output_token=1.25e-6)
    assert llm.retry.max_attempts == 2
    with pytest.raises(ValueError, match="not another bedrock"):
        BedrockLLM("x", MODEL_ID, verifier={"kind": "bedrock", "model_id": MODEL_ID}, client=make_client())
