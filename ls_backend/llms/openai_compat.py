"""An adapter for OpenAI-compatible servers (OpenAI, vLLM, llama.cpp, llama-cpp-python, TGI, LM Studio, ...).

The adapter asks for the answer with ``logprobs`` and reads the class logits from the returned
log-probabilities (the paper's step 1, with log-probabilities standing in for logits: they differ from the
logits at one position by a constant, so the softmax over the classes is the same).

- Endpoint: ``/v1/chat/completions`` with ``logprobs: true, top_logprobs: k`` for chat prompts
  (``prompt.chat``), ``/v1/completions`` with ``logprobs: k`` for plain prompts; ``endpoint`` forces one.
- Matching: a returned token matches a class when its text, stripped of whitespace and surrounding
  punctuation and lower-cased, equals the lower-cased class name, or is a prefix (of at least 2 characters) of
  exactly one class name (the class's first token when the name is several tokens long).
- The answer position is the first generated token that matches a class; the class logits are that position's
  largest matching log-probability per class (over the generated token and its ``top_logprobs`` list), and the
  answer is that token's class. When no generated token matches a class, the logits are the maximum over all
  generated positions, the answer is the best class, and ``meta["no_answer_token"]`` marks the item.
- Floor: a class that none of the considered top lists contains gets the smallest log-probability in those lists
  minus log(2) (it is less likely than every listed token; halving the smallest listed probability is a
  conservative guess that keeps the logit finite and below every class that was seen).
- Cost: the LLM's :class:`~ls_backend.llms.base.CostModel` over the measured seconds of each request and the
  ``usage`` token counts of the response.
- Requests run concurrently on a small bounded thread pool; 408/429/5xx answers, timeouts and refused
  connections are retried with exponential backoff and jitter (honouring ``Retry-After``); other 4xx answers
  raise at once with the server's message (401/403: :class:`RemoteAuthError`, 404 or ``model_not_found``:
  :class:`RemoteModelNotFoundError`, others: :class:`RemoteRequestError`).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import numpy as np

from ls_backend.llms.base import CostModel, ScoredBatch
from ls_backend.llms.prompts import PromptTemplate
from ls_backend.llms.scoring import (
    RemoteAuthError,
    RemoteModelNotFoundError,
    RemoteRequestError,
    RetryPolicy,
    TransientError,
)

Endpoint = Literal["auto", "chat", "completions"]
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_PUNCTUATION = "\"'`.,:;!?*()[]{}<>-_"
LOG2 = math.log(2.0)


def normalize_token(token: str) -> str:
    """A token's text as compared with class names: whitespace and surrounding punctuation off, lower case."""
    return token.strip().strip(_PUNCTUATION).strip().lower()


def match_class(token: str, classes: Sequence[str]) -> int:
    """Index of the class a returned token stands for, or -1 (see the module docstring for the rule)."""
    t = normalize_token(token)
    if not t:
        return -1
    names = [c.strip().lower() for c in classes]
    if t in names:
        return names.index(t)
    if len(t) >= 2:
        starting = [i for i, name in enumerate(names) if name.startswith(t)]
        if len(starting) == 1:
            return starting[0]
    return -1


@dataclass(frozen=True)
class Position:
    """One generated token with its log-probability and the alternatives the server listed."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def positions_from_response(response: Mapping[str, Any]) -> list[Position]:
    """The generated positions of the first choice of a chat or completions response with logprobs."""
    try:
        choice = response["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise RemoteRequestError(f"response has no choices: {_snippet(response)}") from None
    logprobs = choice.get("logprobs")
    if not logprobs:
        raise RemoteRequestError(
            "response has no logprobs: the server ignored the logprobs request (some servers need an option "
            f"for it, e.g. llama-cpp-python's --logits_all true): {_snippet(response)}"
        )
    if "content" in logprobs:  # chat completions
        content = logprobs["content"] or []
        return [
            Position(
                str(p["token"]),
                float(p["logprob"]),
                tuple((str(t["token"]), float(t["logprob"])) for t in p.get("top_logprobs") or ()),
            )
            for p in content
        ]
    tokens = logprobs.get("tokens") or []  # completions (legacy format)
    token_logprobs = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [
        Position(str(tok), float(lp), tuple((str(k), float(v)) for k, v in (top or {}).items()))
        for tok, lp, top in zip(tokens, token_logprobs, tops, strict=False)
        if lp is not None
    ]


def class_logits_from_positions(
    positions: Sequence[Position], classes: Sequence[str]
) -> tuple[np.ndarray, int, bool]:
    """Class logits, the answer's class index and whether a generated token named a class.

    The paper's step 1 on returned log-probabilities (see the module docstring: answer position, matching, floor).
    """
    if not positions:
        raise RemoteRequestError("response generated no token with a log-probability")
    answer_at = next((k for k, p in enumerate(positions) if match_class(p.token, classes) >= 0), None)
    considered = positions if answer_at is None else [positions[answer_at]]
    n_classes = len(classes)
    best = np.full(n_classes, -np.inf)
    listed: list[float] = []
    for p in considered:
        for token, logprob in ((p.token, p.logprob), *p.top):
            listed.append(logprob)
            c = match_class(token, classes)
            if c >= 0 and logprob > best[c]:
                best[c] = logprob
    floor = min(listed) - LOG2
    logits = np.where(np.isfinite(best), best, floor)
    if answer_at is None:
        return logits, int(np.argmax(logits)), False
    return logits, match_class(positions[answer_at].token, classes), True


def _snippet(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


class OpenAICompatibleLLM:
    """An LLM behind an OpenAI-compatible HTTP API, scored from the ``logprobs`` of its answer.

    Args:
        name: unique id of this LLM in scores tables and the score cache.
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1`` or ``https://api.openai.com/v1``.
        model: the model id sent in each request.
        revision: part of the cache key; defaults to ``model`` (set it when the server's weights change).
        endpoint: ``"chat"``, ``"completions"`` or ``"auto"`` (chat when the prompt has ``chat=True``).
        top_logprobs: how many alternatives per position to ask for (OpenAI allows up to 20).
        max_tokens: how many tokens to generate (the answer position is the first that names a class).
        api_key: the bearer token; ``None`` reads the environment variable ``api_key_env`` (no header if unset).
        timeout: seconds for each HTTP request (connect and read).
        max_workers: concurrent requests.
        retry: backoff policy for transient failures (a :class:`RetryPolicy` or its fields as a mapping).
        cost_model: a :class:`CostModel` or its fields as a mapping (a config's ``cost`` entry).
        extra_body: more request fields (e.g. ``{"seed": 0}``), sent with every request.
    """

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        revision: str | None = None,
        endpoint: Endpoint = "auto",
        top_logprobs: int = 20,
        max_tokens: int = 4,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_workers: int = 4,
        retry: RetryPolicy | dict[str, Any] | None = None,
        cost_model: CostModel | Mapping[str, Any] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not name:
            raise ValueError("OpenAICompatibleLLM: 'name' must not be empty")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"OpenAICompatibleLLM {name!r}: base_url must start with http:// or https://, got {base_url!r}"
            )
        if endpoint not in ("auto", "chat", "completions"):
            raise ValueError(
                f"OpenAICompatibleLLM {name!r}: endpoint must be auto, chat or completions, got {endpoint!r}"
            )
        for field_name, value in (
            ("top_logprobs", top_logprobs),
            ("max_tokens", max_tokens),
            ("max_workers", max_workers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"OpenAICompatibleLLM {name!r}: {field_name} must be a positive integer, got {value!r}"
                )
        if timeout <= 0:
            raise ValueError(f"OpenAICompatibleLLM {name!r}: timeout must be > 0, got {timeout!r}")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.revision = revision if revision is not None else model
        self.endpoint: Endpoint = endpoint
        self.top_logprobs = top_logprobs
        self.max_tokens = max_tokens
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.timeout = float(timeout)
        self.max_workers = max_workers
        self.retry = RetryPolicy.from_value(retry)
        self.cost_model = cost_model if isinstance(cost_model, CostModel) else CostModel.from_dict(cost_model)
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"

    # requests --------------------------------------------------------------------------------------------
    def uses_chat(self, prompt: PromptTemplate) -> bool:
        return self.endpoint == "chat" or (self.endpoint == "auto" and prompt.chat)

    def request_for(self, text: str, prompt: PromptTemplate) -> tuple[str, dict[str, Any]]:
        """The endpoint path (relative to ``base_url``) and JSON body that ask about one text."""
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "temperature": 0.0}
        if self.uses_chat(prompt):
            body.update(messages=prompt.render_messages(text), logprobs=True, top_logprobs=self.top_logprobs)
            path = "/chat/completions"
        else:
            body.update(prompt=prompt.render_plain(text), logprobs=self.top_logprobs)
            path = "/completions"
        body.update(self.extra_body)
        return path, body

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a JSON body with retries; the decoded JSON response."""
        url = self.base_url + path
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"

        def attempt() -> dict[str, Any]:
            request = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                self._raise_for_status(e, url)
            except TimeoutError as e:
                raise TransientError(f"timed out after {self.timeout:g} s ({e})") from None
            except urllib.error.URLError as e:
                # an unknown host will not appear by waiting; a refused or reset connection may (server starting)
                if isinstance(e.reason, OSError) and not isinstance(e.reason, socket.gaierror):
                    raise TransientError(f"cannot reach {url}: {e.reason}") from None
                raise RemoteRequestError(f"{self.name}: cannot reach {url}: {e.reason}") from None
            except ConnectionError as e:
                raise TransientError(f"connection to {url} failed: {e}") from None
            try:
                decoded = json.loads(raw)
            except json.JSONDecodeError:
                raise RemoteRequestError(
                    f"{self.name}: {url} answered with non-JSON: {_snippet(raw.decode('utf-8', 'replace'))}"
                ) from None
            if not isinstance(decoded, dict):
                raise RemoteRequestError(
                    f"{self.name}: {url} answered with {type(decoded).__name__}, not an object"
                )
            return decoded

        return self.retry.call(attempt, f"{self.name} POST {url}", sleep=self._sleep)

    def _raise_for_status(self, error: urllib.error.HTTPError, url: str) -> NoReturn:
        try:
            body = error.read().decode("utf-8", "replace")
        except OSError:
            body = ""
        if error.code in RETRY_STATUS:
            retry_after = error.headers.get("Retry-After") if error.headers else None
            try:
                wait = float(retry_after) if retry_after else None
            except ValueError:
                wait = None
            raise TransientError(f"HTTP {error.code}: {_snippet(body)}", retry_after=wait)
        message = f"{self.name}: {url} answered HTTP {error.code}: {_snippet(body)}"
        if error.code in (401, 403):
            raise RemoteAuthError(message + " (check api_key / the environment variable with the key)")
        if error.code == 404 or "model_not_found" in body:
            raise RemoteModelNotFoundError(message + f" (is model {self.model!r} served at {self.base_url}?)")
        raise RemoteRequestError(message)

    # scoring ---------------------------------------------------------------------------------------------
    def _score_one(self, text: str, prompt: PromptTemplate) -> tuple[np.ndarray, int, bool, float, int, int]:
        path, body = self.request_for(text, prompt)
        started = time.perf_counter()
        response = self.post(path, body)
        seconds = time.perf_counter() - started
        logits, answer, named = class_logits_from_positions(positions_from_response(response), prompt.classes)
        usage = response.get("usage") or {}
        input_tokens, output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if self.cost_model.unit == "per_token" and (input_tokens is None or output_tokens is None):
            raise RemoteRequestError(
                f"{self.name}: cost unit is per_token but the response has no usage token counts: {_snippet(usage)}"
            )
        return logits, answer, named, seconds, int(input_tokens or 0), int(output_tokens or 0)

    def score(self, texts: Sequence[str], prompt: PromptTemplate) -> ScoredBatch:
        """Answers, class logits and costs for each text (concurrent requests, order kept)."""
        texts = list(texts)
        if not texts:
            raise ValueError(f"{self.name}: no texts to score")
        workers = min(self.max_workers, len(texts))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda t: self._score_one(t, prompt), texts))
        seconds = np.array([r[3] for r in results])
        input_tokens = np.array([r[4] for r in results])
        output_tokens = np.array([r[5] for r in results])
        return ScoredBatch(
            answers=np.array([r[1] for r in results], dtype=np.int64),
            logits=np.stack([r[0] for r in results]),
            costs=self.cost_model.cost(seconds, input_tokens, output_tokens),
            meta={
                "no_answer_token": [not r[2] for r in results],
                "input_tokens": input_tokens.tolist(),
                "output_tokens": output_tokens.tolist(),
                "request_seconds": seconds.tolist(),
            },
        )
