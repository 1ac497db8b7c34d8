"""The Label Studio ML backend: a Flask app speaking the protocol Label Studio 1.23.2 uses.

=================  ==========================================================================================
``GET /health``    ``{"status": "UP", "model_class": ...}`` (Label Studio waits 1 s before every /setup)
``POST /setup``    labeling config + ``extra_params`` -> ``{"model_version": ...}``; 400 names a config it cannot
                   label (a non-2xx makes Label Studio refuse the backend)
``POST /predict``  ``{"results": [...]}``: one entry per task, in order
``GET /versions``  ``{"versions": [...]}``: the model versions this server has answered with
``POST /webhook``  stored durably in the label store, then answered (Label Studio gives it 1 s); the learning
                   loop (catch-up, retrains) follows in the background
``GET /metrics``   Prometheus text: requests, latency, LLM calls, cache hits and cost, cascade depth, predictions
                   by confidence band; per project labels by source, routing bands, the serving version
``GET /explain``   ``?project=<id>[&task=<id>]``: for the latest predictions, which LLMs were asked, what each
                   answered, the costs and the policy's decision (Label Studio keeps none of this)
``GET /status``    ``?project=<id>``: the project's learning loop (labels, bands, versions, retrains)
``POST /calibration-sample``  ``{"project", "k", "method", "seed"}``: draw and mark a calibration sample
``POST /jobs/prelabel``  ``{"project", "mode": "missing" | "all"}``: pre-annotate the project in the background
                   (202 with the job; 409 with the active one); ``GET /jobs/<id>``, ``GET /jobs?project=``,
                   ``POST /jobs/<id>/cancel``
=================  ==========================================================================================

Every error is JSON ``{"error": "...", "status": code}``; a bad request never stops the server, and nothing is
registered or written for a request that fails. Projects are registered by /setup or by the first /predict with
tasks, at most ``limits.max_projects`` of them (a new one beyond gets 503). A task the
backend cannot read (no text under the configured data key, an empty or non-string text) gets an empty
prediction ``{"result": [], "score": 0.0, ...}`` (stored by Label Studio, so it is not asked again for that model
version); a task the model failed on gets an empty list (no prediction stored, asked again next time).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from werkzeug.exceptions import (
    BadRequest,
    HTTPException,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    Unauthorized,
)

from ls_backend import __version__
from ls_backend.labelstudio import LabelConfigError, LabelSpec, LabelStudioAccess, parse_label_config
from ls_backend.loop.events import exceeds_depth, label_studio_id, text_may_exceed_depth
from ls_backend.loop.jobs import MODES, JobConflict
from ls_backend.server.auth import AUTH_REQUIRED, has_basic_auth
from ls_backend.server.config import BackendConfig, ConfigError, load_config, parse_extra_params
from ls_backend.server.learning import LearningLoop
from ls_backend.server.predictor import (
    CascadePredictor,
    Prediction,
    Predictor,
    ProjectSetup,
    describe_predictions,
    label_studio_entry,
)
from ls_backend.server.project_registry import ProjectLimitError
from ls_backend.server.projects import ProjectDescriptions, ProjectIdError, parse_project_id
from ls_backend.server.telemetry import ServerMetrics
from ls_backend.server.webhooks import WebhookEndpoint

logger = logging.getLogger(__name__)

AUTH_USER_ENV = "BASIC_AUTH_USER"
AUTH_PASS_ENV = "BASIC_AUTH_PASS"
WEBHOOK_SECRET_ENV = "WEBHOOK_SECRET"
MAX_BODY_BYTES = 256 * 1024 * 1024
# consecutive single-task failures, with no success, after which the model is taken to be broken
SYSTEMATIC_FAILURES = 3
# how many recent predictions /explain remembers (per server)
EXPLAIN_CAPACITY = 10_000


class PredictorFailure(RuntimeError):
    """The predictor failed on every task it was asked about: a broken model, not a bad task."""


def default_question(label: LabelSpec) -> str:
    return "Which of the labels fits this text best?"


@dataclass
class _ProjectRecord:
    number: int
    label_config: str
    extra_params: dict[str, Any]
    config: BackendConfig
    versions: set[str] = field(default_factory=set)


class RecentPredictions:
    """The details of the latest predictions (LLMs asked, their answers, costs), by (project, task id)."""

    def __init__(self, capacity: int = EXPLAIN_CAPACITY) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[int, str], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, project: int, entries: list[tuple[Any, dict[str, Any]]]) -> None:
        with self._lock:
            for task_id, detail in entries:
                key = (project, str(task_id))
                self._items.pop(key, None)
                self._items[key] = detail
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, project: int, task: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if task is not None:
                found = self._items.get((project, task))
                return [found] if found is not None else []
            return [d for (p, _), d in self._items.items() if p == project]


def _detail(task_id: Any, prediction: Prediction) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "task": task_id,
        "choice": prediction.choice,
        "score": prediction.score,
        "model_version": prediction.model_version,
        "llms_asked": list(prediction.llms_asked),
        "cost": prediction.cost,
    }
    if prediction.llm_costs is not None:
        detail["llm_costs"] = list(prediction.llm_costs)
    if prediction.llm_called is not None:
        detail["llm_called"] = list(prediction.llm_called)
    if prediction.trace is not None:
        detail.update(prediction.trace)
    if prediction.reason:
        detail["reason"] = prediction.reason
    return detail


@dataclass
class BackendState:
    """Everything the app shares between requests (thread-safe through ``lock``)."""

    config: BackendConfig
    predictor: Predictor
    metrics: ServerMetrics
    descriptions: ProjectDescriptions
    auth: tuple[str, str] | None
    webhook_secret: str | None
    description_wait: float
    projects: dict[str, _ProjectRecord] = field(default_factory=dict)
    learning: LearningLoop | None = None
    recent: RecentPredictions = field(default_factory=RecentPredictions)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # "lazy" (loaded at the first /predict), "loading", "ready" or "failed: <error>"
    model_status: str = "lazy"
    model_ready: threading.Event = field(default_factory=threading.Event)
    in_flight: int = 0  # requests being answered now (under lock)

    def busy(self) -> bool:
        """Whether a request is being answered (a retrain's tuning process is paused meanwhile)."""
        return self.in_flight > 0

    def known(self, number: int) -> bool:
        """Whether the project is registered (by /setup, a /predict with tasks, or restored at start)."""
        with self.lock:
            if any(r.number == number for r in self.projects.values()):
                return True
        return self.learning is not None and self.learning.get(number) is not None

    def admit(self, number: int) -> None:
        """Refuse (503) a project that is not registered when ``limits.max_projects`` are."""
        if self.known(number):
            return
        with self.lock:
            numbers = {r.number for r in self.projects.values()}
        if self.learning is not None:
            numbers |= set(self.learning.project_numbers())
        limit = self.config.limits.max_projects
        if len(numbers) >= limit:
            raise ServiceUnavailable(
                f"this backend already serves {len(numbers)} projects (limits.max_projects = {limit}); "
                f"project {number} is not registered"
            )

    def warm_up(self) -> None:
        """Load the predictor's model in a background thread (Label Studio gives /setup 3 s, /predict 100 s)."""
        load = getattr(self.predictor, "warm_up", None)
        if load is None:
            self.model_ready.set()
            return

        def run() -> None:
            self.model_status = "loading"
            try:
                load(self.config)
                self.model_status = "ready"
                logger.info("model loaded")
            except Exception as e:
                self.model_status = f"failed: {type(e).__name__}: {e}"
                logger.exception("loading the model failed; /predict will try again and report the error")
            self.model_ready.set()

        threading.Thread(target=run, name="lwc-warm-up", daemon=True).start()


def _env_auth() -> tuple[str, str] | None:
    user, password = os.environ.get(AUTH_USER_ENV, ""), os.environ.get(AUTH_PASS_ENV, "")
    if bool(user) != bool(password):
        raise ConfigError(f"set both {AUTH_USER_ENV} and {AUTH_PASS_ENV} for basic auth, or neither")
    return (user, password) if user else None


def create_app(
    config: BackendConfig | str | Path | Mapping[str, Any] | None = None,
    predictor: Predictor | None = None,
    *,
    descriptions: ProjectDescriptions | None = None,
    auth: tuple[str, str] | bool | None = True,
    webhook_secret: str | bool | None = True,
    description_wait: float = 2.0,
    warm_up: bool = False,
    learning: bool | None = None,
) -> Flask:
    """The ML backend app.

    Args:
        config: a :class:`BackendConfig`, a YAML path, a mapping, or None for the file named by ``$LWC_CONFIG``.
        predictor: what answers /predict (default: :class:`CascadePredictor`, the configured LLMs).
        descriptions: where project descriptions come from (default: Label Studio at ``$LABEL_STUDIO_URL``).
        auth: ``(user, password)`` for HTTP basic auth, None for none, True to read ``$BASIC_AUTH_USER/PASS``.
        webhook_secret: the ``X-Webhook-Secret`` value /webhook requires, None for none, True for the env var.
        description_wait: seconds /predict waits for a project description still being read from Label Studio.
        warm_up: load the predictor's model now, in the background (``/health`` reports its ``model`` status).
        learning: run the learning loop (labels from webhooks, routing, retrains, versions; docs/learning-loop.md).
            None: when the predictor is a :class:`CascadePredictor` and the config's ``loop.enabled`` is true.
    """
    if isinstance(config, BackendConfig):
        backend_config = config
    elif isinstance(config, Mapping):
        backend_config = BackendConfig.from_mapping(config)
    else:
        backend_config = load_config(config)
    predictor = predictor if predictor is not None else CascadePredictor()
    access = LabelStudioAccess.from_env()
    if learning is None:
        learning = isinstance(predictor, CascadePredictor) and backend_config.learning.enabled
    loop: LearningLoop | None = None
    if learning:
        if not isinstance(predictor, CascadePredictor):
            raise TypeError("the learning loop needs a CascadePredictor (its LLMs score the labeled texts)")
        loop = LearningLoop(predictor, backend_config, access)
        if predictor.model_source is None:
            predictor.model_source = loop.model_source
    state = BackendState(
        config=backend_config,
        predictor=predictor,
        learning=loop,
        metrics=ServerMetrics(backend_config.confidence_bands),
        descriptions=descriptions
        or ProjectDescriptions(access, capacity=2 * backend_config.limits.max_projects),
        auth=_env_auth() if auth is True else (auth or None),
        webhook_secret=(os.environ.get(WEBHOOK_SECRET_ENV) or None)
        if webhook_secret is True
        else webhook_secret or None,
        description_wait=description_wait,
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["lwc"] = state
    if loop is not None:
        state.metrics.registry.register(loop.metrics_collector())
        loop.server_busy = state.busy
        loop.on_job_predictions = functools.partial(_record_job_predictions, state)
    _register_hooks(app, state)
    _register_routes(app, state)
    # POST /webhook is answered before Flask's request machinery (see ls_backend.server.webhooks for why)
    app.wsgi_app = WebhookEndpoint(state, app.wsgi_app, MAX_BODY_BYTES)  # type: ignore[method-assign]
    if warm_up:
        state.warm_up()
    if loop is not None:
        loop.start()
    return app


# ---------------------------------------------------------------------------------------------------------------
# request plumbing


def _register_hooks(app: Flask, state: BackendState) -> None:
    @app.before_request
    def start_and_authenticate() -> None:
        g.started = time.perf_counter()
        with state.lock:
            state.in_flight += 1
            g.counted = True
        if state.auth is None or request.path == "/health":
            return
        if not has_basic_auth(request.headers.get("Authorization"), state.auth):
            raise Unauthorized(AUTH_REQUIRED)

    @app.after_request
    def record(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        state.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        started = getattr(g, "started", None)
        if started is not None:
            state.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        return response

    @app.teardown_request
    def finished(error: BaseException | None) -> None:
        if g.pop("counted", False):
            with state.lock:
                state.in_flight -= 1

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException) -> tuple[Response, int]:
        code = e.code or 500
        message = e.description or e.name
        if isinstance(e, RequestEntityTooLarge):
            message = f"request body larger than {MAX_BODY_BYTES} bytes"
        logger.warning("%s %s -> %d: %s", request.method, request.path, code, message)
        response = jsonify({"error": message, "status": code})
        if code == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="label-with-confidence"'
        return response, code

    @app.errorhandler(Exception)
    def unexpected(e: Exception) -> tuple[Response, int]:
        logger.exception("%s %s failed", request.method, request.path)
        return jsonify({"error": f"{type(e).__name__}: {e}", "status": 500}), 500


def _json_object(state: BackendState, optional: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or 400 saying why not (total: no body makes another error)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise BadRequest("the request body is empty; expected a JSON object")
    depth = state.config.limits.max_json_depth
    too_deep = f"the request body is nested deeper than {depth} levels (limits.max_json_depth)"
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise BadRequest(too_deep) from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    if text_may_exceed_depth(raw, depth) and exceeds_depth(body, depth):
        raise BadRequest(too_deep)
    return body


def _require(body: Mapping[str, Any], key: str, what: str) -> Any:
    if body.get(key) is None:
        raise BadRequest(f"missing {key!r} ({what})")
    return body[key]


# ---------------------------------------------------------------------------------------------------------------
# projects


def _label_spec(label_config: Any) -> LabelSpec:
    if not isinstance(label_config, str):
        raise BadRequest(f"the labeling config must be an XML string, got {type(label_config).__name__}")
    try:
        return parse_label_config(label_config)
    except LabelConfigError as e:
        raise BadRequest(f"cannot label this project: {e}") from None


def _project_key(value: Any) -> tuple[str, int]:
    try:
        return parse_project_id(value)
    except ProjectIdError as e:
        raise BadRequest(str(e)) from None


def _project_setup(
    state: BackendState,
    key: str,
    number: int,
    label_config: str,
    extra: Mapping[str, Any],
    config: BackendConfig,
    wait: float,
) -> ProjectSetup:
    label = _label_spec(label_config)
    question, source = default_question(label), "default"
    if config.question:
        question, source = config.question, "config"
    else:
        description = state.descriptions.get(number, wait=wait)
        if description:
            question, source = description, "label_studio"
    return ProjectSetup(
        key, label, config, question, source, label_config_xml=label_config, extra_params=extra
    )


def _setup_access(body: Mapping[str, Any]) -> LabelStudioAccess | None:
    hostname, token = body.get("hostname"), body.get("access_token")
    if isinstance(hostname, str) and hostname.startswith("http") and isinstance(token, str) and token:
        return LabelStudioAccess(hostname.rstrip("/"), token)
    return None


# ---------------------------------------------------------------------------------------------------------------
# prediction


def _task_text(task: Any, label: LabelSpec) -> tuple[str | None, str | None]:
    """The text of a task, or None and the reason it has none."""
    if not isinstance(task, Mapping):
        return None, f"task is a {type(task).__name__}, not an object"
    data = task.get("data")
    if not isinstance(data, Mapping):
        return None, "task has no 'data' object"
    if label.data_key not in data:
        return (
            None,
            f"task data has no {label.data_key!r} field (the labeling config's <Text> reads ${label.data_key})",
        )
    text = data[label.data_key]
    if not isinstance(text, str):
        return None, f"task data {label.data_key!r} is a {type(text).__name__}, not text"
    if not text.strip():
        return None, f"task data {label.data_key!r} is empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" in the JSON): no LLM or store can take it
        return (
            None,
            f"task data {label.data_key!r} is not valid Unicode (a lone surrogate at character {e.start})",
        )
    return text, None


def _failed(version: str, reason: str) -> Prediction:
    return Prediction(choice=None, score=None, model_version=version, reason=reason)


def _predict_robustly(state: BackendState, setup: ProjectSetup, texts: list[str]) -> list[Prediction]:
    """The predictor's answers; when a batch fails, task by task, so that one bad task does not fail the rest."""
    version = state.predictor.model_version(setup)
    try:
        predictions = state.predictor.predict(setup, texts)
    except Exception as e:
        if len(texts) == 1:
            logger.exception("prediction failed")
            raise PredictorFailure(f"the model failed: {type(e).__name__}: {e}") from e
        logger.warning(
            "prediction of %d tasks failed (%s: %s); retrying task by task", len(texts), type(e).__name__, e
        )
        predictions = []
        successes = 0
        for i, text in enumerate(texts):
            try:
                (single,) = state.predictor.predict(setup, [text])
                successes += 1
                predictions.append(single)
            except Exception as item_error:
                if successes == 0 and i + 1 >= SYSTEMATIC_FAILURES:
                    raise PredictorFailure(
                        f"the model failed: {type(item_error).__name__}: {item_error}"
                    ) from e
                predictions.append(
                    _failed(version, f"the model failed: {type(item_error).__name__}: {item_error}")
                )
    if len(predictions) != len(texts):
        raise RuntimeError(f"the predictor answered {len(predictions)} predictions for {len(texts)} tasks")
    return predictions


def _result_entry(label: LabelSpec, prediction: Prediction, task_id: Any) -> dict[str, Any] | list[Any]:
    """The /predict entry of one task; a prediction Label Studio would reject becomes no prediction."""
    entry, problem = label_studio_entry(label, prediction)
    if entry is not None:
        return entry
    logger.warning("task %s: no prediction: %s", task_id, problem)
    return []


def _record_llm_usage(state: BackendState, prediction: Prediction) -> None:
    """LLM calls and their cost (only calls made now; outputs from the score cache count as cache hits)."""
    if not prediction.llms_asked:
        return
    metrics = state.metrics
    metrics.depth.labels(depth=str(len(prediction.llms_asked))).inc()
    metrics.answered_by.labels(member=prediction.llms_asked[-1]).inc()
    n_asked = len(prediction.llms_asked)
    called = prediction.llm_called if prediction.llm_called is not None else (True,) * n_asked
    if prediction.llm_costs is not None and len(prediction.llm_costs) == n_asked and len(called) == n_asked:
        for llm, cost, fresh in zip(prediction.llms_asked, prediction.llm_costs, called, strict=True):
            if fresh:
                metrics.llm_calls.labels(llm=llm).inc()
                metrics.llm_cost.labels(llm=llm).inc(_bookable_cost(cost))
            else:
                metrics.cache_hits.labels(llm=llm).inc()
        return
    for llm in prediction.llms_asked:
        metrics.llm_calls.labels(llm=llm).inc()
    # only the total is known: it is booked under the chain of LLMs that produced it
    metrics.llm_cost.labels(llm="+".join(prediction.llms_asked)).inc(_bookable_cost(prediction.cost))


def _bookable_cost(cost: float) -> float:
    """What a cost adds to ``lwc_llm_cost_total``: a counter never goes down, and a NaN or infinite sum would stay
    in it for the life of the process, so a negative or non-finite cost (a broken cost model) adds nothing."""
    value = float(cost)
    return value if math.isfinite(value) and value > 0 else 0.0


def _record_job_predictions(
    state: BackendState, project: int, task_ids: list[int], predictions: list[Prediction]
) -> None:
    """A pre-annotation job's batch, booked as ``/predict`` books its own: LLM calls, cache hits and cost, cascade
    depth and confidence band in ``/metrics``; which LLMs were asked in ``/explain``."""
    details = []
    for task_id, prediction in zip(task_ids, predictions, strict=True):
        _record_llm_usage(state, prediction)
        state.metrics.record_prediction(prediction.score if prediction.choice is not None else None)
        details.append((task_id, _detail(task_id, prediction)))
    state.recent.add(project, details)


# ---------------------------------------------------------------------------------------------------------------
# routes


def _register_routes(app: Flask, state: BackendState) -> None:
    @app.get("/health")
    def health() -> Response:
        return jsonify(
            {
                "status": "UP",
                "model_class": type(state.predictor).__name__,
                "model": state.model_status,
                "version": __version__,
            }
        )

    @app.post("/setup")
    def setup() -> Response:
        # everything is checked before anything is registered or written: a refused /setup leaves no trace
        body = _json_object(state)
        key, number = _project_key(_require(body, "project", "Label Studio's '<id>.<created_at>'"))
        label_config = _require(body, "schema", "the project's labeling config")
        label = _label_spec(label_config)
        try:
            extra = parse_extra_params(body.get("extra_params"))
            config = state.config.merged(extra)
        except ConfigError as e:
            raise BadRequest(f"bad extra_params: {e}") from None
        state.admit(number)
        if not config.question:
            state.descriptions.prefetch(number, fallback=_setup_access(body))
        project = _project_setup(state, key, number, label_config, extra, config, wait=0.0)
        try:
            version = state.predictor.model_version(project)
        except ValueError as e:
            raise BadRequest(f"bad configuration: {e}") from None
        _register(state, project, _setup_access(body))
        prepare = getattr(state.predictor, "prepare", None)
        if prepare is not None:
            prepare(project)  # e.g. fit the out-of-task model now, in the background
        with state.lock:
            record = _ProjectRecord(number, label_config, extra, config)
            previous = state.projects.get(key)
            record.versions = (previous.versions if previous else set()) | {version}
            for other in [k for k, r in state.projects.items() if r.number == number and k != key]:
                record.versions |= state.projects.pop(other).versions  # one record per project
            state.projects[key] = record
        if state.learning is not None:
            state.learning.after_setup(project, version)
        logger.info("setup of project %s: classes %s, model version %s", key, list(label.choices), version)
        return jsonify({"model_version": version})

    @app.post("/predict")
    def predict() -> Response:
        body = _json_object(state)
        tasks = _require(body, "tasks", "the list of tasks to predict")
        if not isinstance(tasks, list):
            raise BadRequest(f"'tasks' must be a list of task objects, got {type(tasks).__name__}")
        key, number = _project_key(_require(body, "project", "Label Studio's '<id>.<created_at>'"))
        with state.lock:
            record = state.projects.get(key)
        config = state.config if record is None else record.config
        if len(tasks) > config.max_tasks:
            return _error(413, f"{len(tasks)} tasks in one request; at most {config.max_tasks} (max_tasks)")
        label_config = body.get("label_config") or (record.label_config if record else None)
        if label_config is None:
            raise BadRequest("missing 'label_config' and no /setup for this project")
        if record is not None and label_config != record.label_config:
            config = state.config.merged(record.extra_params)  # the config changed after /setup
        label = _label_spec(label_config)
        if not tasks:  # nothing to predict: nothing registered, written or fetched
            return jsonify({"results": []})
        state.admit(number)
        if not config.question:
            state.descriptions.prefetch(number)
        extra = record.extra_params if record is not None else {}
        project = _project_setup(state, key, number, label_config, extra, config, wait=state.description_wait)
        try:
            version = state.predictor.model_version(project)
        except ValueError as e:
            raise BadRequest(f"bad configuration: {e}") from None

        texts: list[str] = []
        readable: list[int] = []
        entries: list[dict[str, Any] | list[Any]] = []
        for i, task in enumerate(tasks):
            text, reason = _task_text(task, label)
            if text is None:
                task_id = task.get("id") if isinstance(task, Mapping) else None
                logger.warning("task %s: nothing to predict: %s", task_id, reason)
                state.metrics.record_prediction(None)
                entries.append({"result": [], "score": 0.0, "model_version": version})
            else:
                texts.append(text)
                readable.append(i)
                entries.append([])
        summary: dict[str, Any] = {}
        predictions = []
        if texts:
            try:
                predictions = _predict_robustly(state, project, texts)
            except PredictorFailure as e:
                return _error(500, str(e))
        _register(state, project)  # the first /predict with tasks that answers registers a project
        if texts:
            details = []
            for i, prediction in zip(readable, predictions, strict=True):
                _record_llm_usage(state, prediction)
                task_id = tasks[i].get("id")
                entries[i] = _result_entry(label, prediction, task_id)
                state.metrics.record_prediction(prediction.score if entries[i] else None)
                if label_studio_id(task_id) is not None:  # /explain keeps Label Studio's task ids only
                    details.append((task_id, _detail(task_id, prediction)))
                version = prediction.model_version or version
            state.recent.add(number, details)
            summary = describe_predictions(predictions)
            if state.learning is not None:
                summary["bands"] = _route(state, project, tasks, readable, texts, entries, version)
            if logger.isEnabledFor(logging.DEBUG):
                for task_id, detail in details:
                    logger.debug("task %s: %s", task_id, json.dumps(detail, default=str))
        with state.lock:
            if key in state.projects:
                state.projects[key].versions.add(version)
        logger.info(
            "predicted %d tasks of project %s (%d readable, question from %s) with %s: %s",
            len(tasks),
            key,
            len(texts),
            project.question_source,
            version,
            json.dumps(summary, default=str),
        )
        return jsonify({"results": entries})

    @app.get("/versions")
    def versions() -> Response:
        body = _json_object(state, optional=True)  # Label Studio sends {"project": ...} in a GET body
        project = body.get("project", request.args.get("project"))
        number = None
        if project is not None:
            _, number = _project_key(project)
        with state.lock:
            records = [r for r in state.projects.values() if number is None or r.number == number]
            known = {v for r in records for v in r.versions}
        if state.learning is not None:  # Label Studio 1.23.2 sends no body: every project's versions then
            for project_number in [number] if number is not None else state.learning.project_numbers():
                known |= set(state.learning.version_names(project_number))
        return jsonify({"versions": sorted(known)})

    @app.get("/status")
    def status() -> Response:
        learning = _learning(state)
        _, number = _project_key(request.args.get("project") or "")
        try:
            return jsonify(learning.status(number))
        except KeyError as e:
            return _error(404, str(e.args[0]))

    @app.post("/calibration-sample")
    def calibration_sample() -> Response:
        learning = _learning(state)
        body = _json_object(state)
        _, number = _project_key(_require(body, "project", "Label Studio's project id"))
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise BadRequest(f"'seed' must be an integer, got {seed!r}")
        try:
            drawn = learning.calibration_sample(
                number, body.get("k", 20), str(body.get("method", "SE")), seed
            )
        except KeyError as e:
            return _error(404, str(e.args[0]))
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return jsonify(drawn)

    @app.post("/jobs/prelabel")
    def start_prelabel_job() -> Response:
        learning = _learning(state)
        body = _json_object(state)
        _, number = _project_key(_require(body, "project", "Label Studio's project id"))
        mode = body.get("mode", "missing")
        if mode not in MODES:
            raise BadRequest(f"'mode' must be one of {list(MODES)}, got {mode!r}")
        try:
            job = learning.start_job(number, "prelabel", mode, trigger="api")
        except KeyError as e:
            return _error(404, str(e.args[0]))
        except JobConflict as e:
            response = jsonify({"error": str(e), "status": 409, "job": e.job.to_dict()})
            response.status_code = 409
            return response
        except RuntimeError as e:
            return _error(503, str(e))
        response = jsonify({"job": job.to_dict()})
        response.status_code = 202
        return response

    @app.get("/jobs")
    def list_jobs() -> Response:
        learning = _learning(state)
        project = request.args.get("project")
        number = _project_key(project)[1] if project else None
        jobs = [learning.sync_job(j) for j in learning.job_store.jobs(number, limit=100)]
        return jsonify({"jobs": [j.to_dict() for j in jobs]})

    @app.get("/jobs/<int:job_id>")
    def get_job(job_id: int) -> Response:
        learning = _learning(state)
        job = learning.job_store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return jsonify({"job": learning.sync_job(job).to_dict()})

    @app.post("/jobs/<int:job_id>/cancel")
    def cancel_job(job_id: int) -> Response:
        learning = _learning(state)
        try:
            job = learning.cancel_job(job_id)
        except KeyError:
            raise NotFound(f"no job {job_id}") from None
        return jsonify({"job": job.to_dict()})

    @app.get("/explain")
    def explain() -> Response:
        project = request.args.get("project")
        if not project:
            raise BadRequest("missing ?project=<Label Studio project id>")
        _, number = _project_key(project)
        task = request.args.get("task")
        return jsonify({"project": number, "predictions": state.recent.get(number, task)})

    @app.get("/metrics")
    def metrics() -> Response:
        # generate_latest writes the text format 0.0.4 (prometheus_client's CONTENT_TYPE_LATEST names 1.0.0 since
        # 0.23, which its own exporters send only to a scraper that asks for it)
        return Response(generate_latest(state.metrics.registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _register(state: BackendState, project: ProjectSetup, access: LabelStudioAccess | None = None) -> None:
    """Register the project with the learning loop (its worker, its folder); 503 when the limit is reached."""
    if state.learning is None:
        return
    try:
        state.learning.register(project, access)
    except ProjectLimitError as e:
        raise ServiceUnavailable(str(e)) from None


def _learning(state: BackendState) -> LearningLoop:
    if state.learning is None:
        raise NotFound("the learning loop is off on this server (loop.enabled, or a predictor without LLMs)")
    return state.learning


def _route(
    state: BackendState,
    project: ProjectSetup,
    tasks: list[Any],
    readable: list[int],
    texts: list[str],
    entries: list[dict[str, Any] | list[Any]],
    version: str,
) -> dict[str, int]:
    """Hand the predicted tasks to the learning loop (texts, scores, review marks); returns the band counts."""
    assert state.learning is not None
    ids, kept_texts, scores, choices = [], [], [], []
    for i, text in zip(readable, texts, strict=True):
        task_id = tasks[i].get("id") if isinstance(tasks[i], Mapping) else None
        if isinstance(task_id, bool) or not isinstance(task_id, int) or label_studio_id(task_id) is None:
            continue
        entry = entries[i]
        ids.append(task_id)
        kept_texts.append(text)
        scores.append(entry["score"] if isinstance(entry, dict) else None)
        choices.append(entry["result"][0]["value"]["choices"][0] if isinstance(entry, dict) else None)
    try:
        return state.learning.after_predict(project, ids, kept_texts, scores, version, choices)
    except Exception:  # routing is bookkeeping: the predictions still go back to Label Studio
        logger.exception("project %s: routing the predicted tasks failed", project.project_id)
        return {}


def _error(code: int, message: str) -> Response:
    logger.warning("%s %s -> %d: %s", request.method, request.path, code, message)
    response = jsonify({"error": message, "status": code})
    response.status_code = code
    return response
