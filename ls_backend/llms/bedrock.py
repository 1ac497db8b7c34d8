"""An adapter for chat models on AWS Bedrock (the Converse API), with a local verifier for the confidence.

Bedrock's chat models return text, not logits. As in the paper, a verifier LLM (any local adapter with logits,
e.g. a Hugging Face model) judges the remote answer with a yes/no question, and the verifier's P(yes) is the
confidence ``p`` of that answer. It becomes class logits that the rest of the system can use like any other:

- the answered class gets ``log(p)``, each of the other ``C - 1`` classes ``log((1 - p) / (C - 1))``, so the
  softmax over the classes gives back exactly ``p`` for the answer and spreads ``1 - p`` evenly over the rest;
  ``p`` is clipped to ``[min_confidence, 1 - min_confidence]`` to keep the logits finite. (When ``p < 1 / C``
  the answered class is no longer the argmax of the logits; the ``answer`` field still holds the remote answer.)
- An answer that names no class (see :func:`parse_answer`) gets equal logits for every class (confidence
  ``1 / C``, the lowest possible) and the first class as its answer; ``meta["unparsed"]`` marks it and
  ``meta["raw_answers"]`` keeps every raw answer text.

The verifier is asked once per item, with the task's prompt changed to the yes/no question
``verifier_question`` (placeholders ``{question}`` and ``{answer}``) and the classes ``["yes", "no"]``.

Cost: the remote model's :class:`~ls_backend.llms.base.CostModel` over the measured seconds of the Converse call
and the ``usage.inputTokens`` / ``usage.outputTokens`` of the response. The verifier's own costs are in
``meta["verifier_costs"]``; ``add_verifier_cost=True`` adds them to the item costs (both cost models must then
have the same unit).

Failures: throttling, unavailable service, model timeouts and network timeouts are retried with exponential
backoff and jitter (botocore's own retries are switched off so that one policy governs); bad or missing
credentials raise :class:`RemoteAuthError`, an unknown model id :class:`RemoteModelNotFoundError`, other
rejected requests :class:`RemoteRequestError`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ls_backend.confidence import softmax
from ls_backend.llms.base import LLM, CostModel, ScoredBatch
from ls_backend.llms.prompts import PromptTemplate
from ls_backend.llms.scoring import (
    RemoteAuthError,
    RemoteModelNotFoundError,
    RemoteRequestError,
    RetryPolicy,
    TransientError,
)

DEFAULT_VERIFIER_QUESTION = "{question}\nProposed answer: {answer}\nIs the proposed answer correct?"
VERIFIER_CLASSES = ("yes", "no")

RETRY_CODES = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalServerException",
        "ModelNotReadyException",
        "ModelTimeoutException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
AUTH_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "AccessDeniedException",
        "AccessDenied",
        "ExpiredTokenException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "UnauthorizedException",
        "InvalidClientTokenId",
    }
)
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException", "ModelNotFoundException"})
_MODEL_ID_MESSAGE = re.compile(
    r"model identifier|model id|invalid model|model .*(not found|does not exist)", re.I
)
_ANSWER_PREFIX = re.compile(
    # "is" / "would be" only when a word follows: "Answer: is" answers the class "is"
    r"^(?:(?:the|my|final|correct)\s+)*(?:answer|label|class|classification|category|response)"
    r"(?:\s+(?:is|would be)(?=\s+\S))?\s*",
)


def _words(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form in which answers and classes are compared."""
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def parse_answer(text: str, classes: Sequence[str]) -> int:
    """The class a free-text answer names, or -1 if it names none or is ambiguous.

    Case, punctuation and markup are ignored and a leading "Answer:" / "The answer is" is dropped; the answer
    names a class if it starts with the class's words (the longest such class wins, so "not spam" beats
    "not"), or otherwise if exactly one class occurs in it as whole words.
    """
    said = _ANSWER_PREFIX.sub("", _words(text)).strip()
    names = [_words(c) for c in classes]
    starting = [i for i, name in enumerate(names) if name and (said == name or said.startswith(name + " "))]
    if starting:
        return max(starting, key=lambda i: len(names[i]))
    occurring = [i for i, name in enumerate(names) if name and re.search(rf"\b{re.escape(name)}\b", said)]
    # a class whose words lie inside another occurring class ("spam" in "not spam") does not count on its own
    occurring = [i for i in occurring if not any(j != i and names[i] in names[j] for j in occurring)]
    return occurring[0] if len(occurring) == 1 else -1


def confidence_logits(
    answers: np.ndarray, confidence: np.ndarray, n_classes: int, floor: float
) -> np.ndarray:
    """Class logits whose softmax gives ``confidence`` to each answer and spreads the rest evenly.

    Items with ``answers == -1`` (no parseable answer) get equal logits. (Verifier confidence of the paper's
    black-box LLMs, turned into step-1 class logits.)
    """
    p = np.clip(np.asarray(confidence, dtype=np.float64), floor, 1.0 - floor)
    logits = np.repeat(np.log((1.0 - p) / (n_classes - 1))[:, None], n_classes, axis=1)
    parsed = answers >= 0
    logits[parsed, answers[parsed]] = np.log(p[parsed])
    logits[~parsed] = 0.0
    return logits


def build_verifier(name: str, entry: Mapping[str, Any]) -> tuple[LLM, dict[str, Any]]:
    """The verifier LLM of a config entry, and its prompt overrides (less ``question``: that is the verifier's)."""
    from ls_backend.llms.config import LLMConfig, LLMConfigError

    config = LLMConfig.from_dict({"name": f"{name}-verifier", **entry})
    if config.kind == "bedrock":
        raise LLMConfigError(
            f"BedrockLLM {name!r}: the verifier must be an LLM with logits, not another bedrock LLM"
        )
    prompt = {k: v for k, v in config.prompt.items() if k != "question"}
    return config.build(), prompt


def _error_code(error: Exception) -> tuple[str, str]:
    response = getattr(error, "response", None) or {}
    err = response.get("Error", {})
    return str(err.get("Code", "")), str(err.get("Message", ""))


class BedrockLLM:
    """A Bedrock chat model (Converse API) whose answers a local verifier LLM scores (see the module docstring).

    Args:
        name: unique id of this LLM in scores tables and the score cache.
        model_id: the Bedrock model or inference profile id, e.g. ``anthropic.claude-3-haiku-20240307-v1:0``.
        verifier: a local LLM with logits that answers the yes/no verification question, or its LLM config
            entry (a mapping such as ``{kind: packaged, model: smollm2-135m-instruct, prompt: {chat: true}}``;
            its name defaults to ``<name>-verifier`` and its prompt overrides go to ``verifier_prompt``).
        region: AWS region (default: the session's configured region).
        profile: AWS profile name from the shared config (default: the standard credential chain).
        revision: part of the cache key; defaults to ``model_id``. The verifier's name and revision and the
            verifier question are always added to it, so changing the verifier never reuses old scores.
        max_tokens, temperature: inference settings of the remote call.
        verifier_question: the question put to the verifier, with ``{question}`` and ``{answer}``.
        verifier_prompt: other prompt fields for the verifier (e.g. ``{"chat": true}``), over the task's prompt.
        min_confidence: clip of the verifier's P(yes) away from 0 and 1.
        add_verifier_cost: add the verifier's costs to the item costs.
        max_workers: concurrent Converse calls.
        connect_timeout, read_timeout: seconds, given to botocore.
        retry: backoff policy (a :class:`RetryPolicy` or its fields as a mapping).
        cost_model: a :class:`CostModel` or its fields as a mapping (a config's ``cost`` entry, e.g.
            ``{unit: per_token, per_input_token: 2.5e-7}``).
        client: a ready ``bedrock-runtime`` client (tests pass a stubbed one); built from the arguments otherwise.
    """

    def __init__(
        self,
        name: str,
        model_id: str,
        verifier: LLM | Mapping[str, Any],
        region: str | None = None,
        profile: str | None = None,
        revision: str | None = None,
        max_tokens: int = 10,
        temperature: float = 0.0,
        verifier_question: str = DEFAULT_VERIFIER_QUESTION,
        verifier_prompt: Mapping[str, Any] | None = None,
        min_confidence: float = 1e-6,
        add_verifier_cost: bool = False,
        max_workers: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        retry: RetryPolicy | dict[str, Any] | None = None,
        cost_model: CostModel | Mapping[str, Any] | None = None,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not name or not model_id:
            raise ValueError("BedrockLLM: 'name' and 'model_id' must not be empty")
        if isinstance(verifier, Mapping):
            verifier, config_prompt = build_verifier(name, verifier)
            verifier_prompt = {**config_prompt, **(verifier_prompt or {})}
        if not all(hasattr(verifier, a) for a in ("name", "revision", "cost_model", "score")):
            raise TypeError(
                f"BedrockLLM {name!r}: verifier must be an LLM (name, revision, cost_model, score), got {verifier!r}"
            )
        if "{answer}" not in verifier_question:
            raise ValueError(
                f"BedrockLLM {name!r}: verifier_question must contain {{answer}}, got {verifier_question!r}"
            )
        if not 0.0 < min_confidence < 0.5:
            raise ValueError(
                f"BedrockLLM {name!r}: min_confidence must be in (0, 0.5), got {min_confidence!r}"
            )
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(
                f"BedrockLLM {name!r}: max_workers must be a positive integer, got {max_workers!r}"
            )
        unknown = set(verifier_prompt or {}) - {"template", "chat", "system", "max_text_chars"}
        if unknown:
            raise ValueError(
                f"BedrockLLM {name!r}: verifier_prompt may set template, chat, system, max_text_chars; "
                f"got {sorted(unknown)}"
            )
        self.name = name
        self.model_id = model_id
        self.verifier = verifier
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.verifier_question = verifier_question
        self.verifier_prompt = dict(verifier_prompt or {})
        self.min_confidence = min_confidence
        self.add_verifier_cost = add_verifier_cost
        self.max_workers = max_workers
        self.retry = RetryPolicy.from_value(retry)
        self.cost_model = cost_model if isinstance(cost_model, CostModel) else CostModel.from_dict(cost_model)
        if add_verifier_cost and verifier.cost_model.unit != self.cost_model.unit:
            raise ValueError(
                f"BedrockLLM {name!r}: add_verifier_cost needs one cost unit, but the remote model counts "
                f"{self.cost_model.unit!r} and the verifier {verifier.cost_model.unit!r}"
            )
        verifier_key = PromptTemplate(question="q", classes=VERIFIER_CLASSES).replace(
            question=verifier_question, **self.verifier_prompt
        )
        self.revision = (
            f"{revision or model_id}|verifier={verifier.name}@{verifier.revision}|{verifier_key.hash()[:12]}"
        )
        self._sleep = sleep
        self.client = (
            client
            if client is not None
            else self._make_client(region, profile, connect_timeout, read_timeout)
        )

    @staticmethod
    def _make_client(
        region: str | None, profile: str | None, connect_timeout: float, read_timeout: float
    ) -> Any:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import NoRegionError, ProfileNotFound

        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            return session.client("bedrock-runtime", config=config)
        except ProfileNotFound as e:
            raise RemoteAuthError(f"Bedrock: {e}") from None
        except NoRegionError:
            raise ValueError("Bedrock: no AWS region; set 'region' in the LLM config or AWS_REGION") from None

    def __repr__(self) -> str:
        return f"BedrockLLM(name={self.name!r}, model_id={self.model_id!r}, verifier={self.verifier.name!r})"

    # the remote call -------------------------------------------------------------------------------------
    def converse_request(self, text: str, prompt: PromptTemplate) -> dict[str, Any]:
        """The keyword arguments of the Converse call that asks about one text."""
        messages = prompt.render_messages(text)
        system = [{"text": m["content"]} for m in messages if m["role"] == "system"]
        request: dict[str, Any] = {
            "modelId": self.model_id,
            "messages": [
                {"role": m["role"], "content": [{"text": m["content"]}]}
                for m in messages
                if m["role"] != "system"
            ],
            "inferenceConfig": {"maxTokens": self.max_tokens, "temperature": self.temperature},
        }
        if system:
            request["system"] = system
        return request

    def _converse(self, request: dict[str, Any]) -> tuple[dict[str, Any], float]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        def attempt() -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            try:
                response = self.client.converse(**request)
            except ClientError as e:
                code, message = _error_code(e)
                if code in RETRY_CODES:
                    raise TransientError(f"{code}: {message}") from None
                if code in AUTH_CODES:
                    raise RemoteAuthError(
                        f"{self.name}: AWS rejected the credentials or access to {self.model_id!r} ({code}: {message}); "
                        "check the profile/keys and that model access is enabled in the Bedrock console"
                    ) from None
                if code in NOT_FOUND_CODES or (
                    code == "ValidationException" and _MODEL_ID_MESSAGE.search(message)
                ):
                    raise RemoteModelNotFoundError(
                        f"{self.name}: Bedrock has no model {self.model_id!r} in this region ({code}: {message})"
                    ) from None
                raise RemoteRequestError(
                    f"{self.name}: Bedrock rejected the request ({code}: {message})"
                ) from None
            except (NoCredentialsError, PartialCredentialsError) as e:
                raise RemoteAuthError(f"{self.name}: no usable AWS credentials ({e})") from None
            except (
                ReadTimeoutError,
                ConnectTimeoutError,
                EndpointConnectionError,
                ConnectionClosedError,
            ) as e:
                raise TransientError(str(e)) from None
            except BotoCoreError as e:
                raise RemoteRequestError(f"{self.name}: {e}") from None
            return response, time.perf_counter() - started

        return self.retry.call(attempt, f"{self.name} converse {self.model_id}", sleep=self._sleep)

    @staticmethod
    def response_text(response: Mapping[str, Any]) -> str:
        """The text of the assistant message in a Converse response."""
        content = response.get("output", {}).get("message", {}).get("content", [])
        return "".join(block.get("text", "") for block in content if isinstance(block, Mapping))

    # scoring ---------------------------------------------------------------------------------------------
    def verifier_prompt_for(self, prompt: PromptTemplate, answer: str) -> PromptTemplate:
        """The yes/no prompt that asks the verifier whether ``answer`` is right."""
        return prompt.replace(
            question=self.verifier_question.format(question=prompt.question, answer=answer),
            classes=list(VERIFIER_CLASSES),
            examples=[],
            **self.verifier_prompt,
        )

    def score(self, texts: Sequence[str], prompt: PromptTemplate) -> ScoredBatch:
        """Remote answers for each text, scored by the verifier's P(yes) (see the module docstring)."""
        texts = list(texts)
        if not texts:
            raise ValueError(f"{self.name}: no texts to score")
        requests = [self.converse_request(t, prompt) for t in texts]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(texts))) as pool:
            results = list(pool.map(self._converse, requests))
        raw = [self.response_text(r) for r, _ in results]
        answers = np.array([parse_answer(t, prompt.classes) for t in raw], dtype=np.int64)
        usage = [r.get("usage", {}) for r, _ in results]
        seconds = np.array([s for _, s in results])
        input_tokens = np.array([int(u.get("inputTokens", 0)) for u in usage])
        output_tokens = np.array([int(u.get("outputTokens", 0)) for u in usage])
        costs = self.cost_model.cost(seconds, input_tokens, output_tokens)

        confidence = np.zeros(len(texts))
        verifier_costs = np.zeros(len(texts))
        for c in np.unique(answers[answers >= 0]):
            items = np.flatnonzero(answers == c)
            verdict = self.verifier.score(
                [texts[i] for i in items], self.verifier_prompt_for(prompt, prompt.classes[c])
            )
            confidence[items] = softmax(verdict.logits, axis=-1)[:, VERIFIER_CLASSES.index("yes")]
            verifier_costs[items] = verdict.costs
        if self.add_verifier_cost:
            costs = costs + verifier_costs
        logits = confidence_logits(answers, confidence, len(prompt.classes), self.min_confidence)
        unparsed = answers < 0
        return ScoredBatch(
            answers=np.where(unparsed, 0, answers),
            logits=logits,
            costs=costs,
            meta={
                "unparsed": unparsed.tolist(),
                "raw_answers": raw,
                "verifier_confidence": confidence.tolist(),
                "verifier_costs": verifier_costs.tolist(),
                "input_tokens": input_tokens.tolist(),
                "output_tokens": output_tokens.tolist(),
            },
        )
