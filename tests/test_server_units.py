"""The server's parts on their own: configuration merging, the server's metrics, project ids and descriptions,
and the ``lwc serve`` command line."""

from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from ls_backend.labelstudio import LabelStudioAccess
from ls_backend.server.app import _record_llm_usage
from ls_backend.server.config import (
    PROJECT_SETTINGS,
    SERVER_SETTINGS,
    BackendConfig,
    ConfigError,
    deep_merge,
    load_config,
    parse_extra_params,
)
from ls_backend.server.predictor import Prediction
from ls_backend.server.projects import (
    ProjectDescriptions,
    ProjectIdError,
    parse_project_id,
    plain_text,
)
from ls_backend.server.telemetry import LATENCY_BUCKETS, ServerMetrics, confidence_band
from tests.prometheus_text import metric_samples, metric_value

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# configuration


def test_extra_params_forms() -> None:
    assert (
        parse_extra_params(None) == {} and parse_extra_params("") == {} and parse_extra_params("null") == {}
    )
    assert parse_extra_params('{"question": "q?"}') == {"question": "q?"}
    assert parse_extra_params({"max_tasks": 3}) == {"max_tasks": 3}
    for bad in ("{oops", "[1]", 42, ["a"]):
        with pytest.raises(ConfigError):
            parse_extra_params(bad)


def test_merge_keeps_the_file_and_lets_the_project_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "backend.yaml"
    path.write_text(
        "question: Is this spam?\nprompt: {system: be brief, max_text_chars: 100}\n"
        "llms: [{name: a, kind: hf, model: x}, {name: b, kind: hf, model: y}]\ncascade: {threshold: 0.9}\n"
    )
    monkeypatch.setenv("LWC_CONFIG", str(path))
    base = load_config()
    merged = base.merged({"prompt": {"system": "be kind"}, "llms": ["b"]})
    assert merged.prompt == {"system": "be kind", "max_text_chars": 100}
    # a project picks the server's LLMs by name and gets the server's entries (lists are replaced)
    assert [dict(e) for e in merged.llms] == [{"name": "b", "kind": "hf", "model": "y"}]
    assert merged.question == "Is this spam?" and merged.cascade == {"threshold": 0.9}
    assert merged.cascade_settings.threshold == 0.9 and merged.cascade_settings.n_bins == 5
    assert base.prompt == {"system": "be brief", "max_text_chars": 100}  # the base is untouched
    assert base.merged({}) is base
    monkeypatch.delenv("LWC_CONFIG")
    assert load_config() == BackendConfig()


def test_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LWC_CONFIG"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("question: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    for data, message in (
        ({"questoin": "typo"}, "unknown key 'questoin'"),
        ({"question": ""}, "non-empty string"),
        ({"llms": {"name": "a"}}, "must be a list"),
        ({"prompt": "chat"}, "must be a mapping"),
        ({"max_tasks": 0}, r"max_tasks must be an integer >= 1, got 0"),
        ({"max_text_chars": True}, r"max_text_chars must be an integer >= 1, got True"),
        ({"confidence_bands": [0, 0.5, 0.5, 1]}, "increasing"),
        ({"confidence_bands": [0, math.nan]}, "increasing"),
        ({"cascade": {"thresholds": [0.9]}}, "unknown key 'cascade.thresholds'"),
        ({"cascade": {"calibrator": "platt"}}, "calibrator must be one of"),
        ({"cascade": {"n_bins": 0}}, r"n_bins must be an integer >= 1, got 0"),
        ({"cascade": {"lam": -1}}, "lam must be a finite number >= 0"),
        ({"cascade": {"threshold": 1.5}}, "threshold must be a number in"),
        ({"cascade": {"similar_tasks": "yes"}}, "similar_tasks must be true or false"),
        ({"cascade": {"n_clusters": 0}}, r"n_clusters must be an integer >= 1 or null, got 0"),
        ({"model_dir": ""}, "must be a path"),
        ({"oot_scores": 3}, "must be a path"),
        ({"prompt": {"question": "set per project"}}, "unknown key 'prompt.question'"),
        ({"llms": [{"name": "a", "kind": "gpt5"}]}, "unknown kind 'gpt5'"),
    ):
        with pytest.raises(ConfigError, match=message):
            BackendConfig.from_mapping(data)
    # every problem at once, each with its key
    with pytest.raises(ConfigError, match=r"cascade\.n_bins must .*; max_tasks must"):
        BackendConfig.from_mapping({"max_tasks": 0, "cascade": {"n_bins": 0}})


def test_server_only_keys_and_their_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = BackendConfig.from_mapping(
        {"model_dir": str(tmp_path / "m"), "oot_scores": str(tmp_path / "s.jsonl")}
    )
    for key in ("model_dir", "oot_scores", "oot_tasks"):
        with pytest.raises(ConfigError, match="only be set in the server's config file"):
            base.merged({key: "/etc"})  # extra_params come from anyone who can edit the project
    assert base.resolved_model_dir() == tmp_path / "m"
    assert base.resolved_oot_scores() == tmp_path / "s.jsonl" and base.resolved_oot_tasks() is None
    (tmp_path / "tasks.yaml").write_text("tasks: {}")
    assert base.resolved_oot_tasks() == tmp_path / "tasks.yaml"  # beside the scores
    monkeypatch.setenv("LWC_MODEL_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("LWC_OOT_SCORES", str(tmp_path / "env.jsonl"))
    assert BackendConfig().resolved_model_dir() == tmp_path / "env"
    assert BackendConfig().resolved_oot_scores() == tmp_path / "env.jsonl"
    monkeypatch.delenv("LWC_MODEL_DIR")
    monkeypatch.delenv("LWC_OOT_SCORES")
    # the public benchmark's table ships with the package, beside its tasks file
    packaged = BackendConfig().resolved_oot_scores()
    assert packaged.as_posix().endswith("ls_backend/data/benchmark/scores.jsonl.gz") and packaged.is_file()
    assert BackendConfig().resolved_oot_tasks() == packaged.parent / "tasks.yaml"


def test_every_setting_is_a_projects_or_the_servers() -> None:
    """The trust table covers every key of the models: a setting added later (e.g. a cascade option) is refused for
    projects, and this test fails until it is put in PROJECT_SETTINGS (a rule) or SERVER_SETTINGS (with why)."""
    from ls_backend.loop import LoopConfig
    from ls_backend.server.config import CascadeSettings, LearningSettings, LimitSettings, PromptSettings
    from ls_backend.server.trust import sections, setting_annotations

    every = set(setting_annotations(BackendConfig))
    assert {
        f"loop.{name}" for name in LoopConfig.model_fields
    } <= every  # the trainer's settings are keys too
    for section, model in (
        ("prompt", PromptSettings),
        ("cascade", CascadeSettings),
        ("loop", LearningSettings),
        ("limits", LimitSettings),
    ):
        assert sections(BackendConfig)[section] is model
        assert {f"{section}.{name}" for name in model.model_fields} <= every
    server = {k for k in every if k in SERVER_SETTINGS or k.split(".")[0] in SERVER_SETTINGS}
    assert set(PROJECT_SETTINGS) & server == set()
    assert every - set(PROJECT_SETTINGS) - server == set()
    assert set(PROJECT_SETTINGS) - every == set() and set(SERVER_SETTINGS) - every - {"limits"} == set()


def test_the_docs_list_who_may_set_every_key() -> None:
    """docs/server.md's table is the one the models and the two tables make (scripts/write_settings_table.py
    writes it): a key added to a model, or to a rule, fails here until the docs say it."""
    from ls_backend.server.config import settings_table

    text = (REPO_ROOT / "docs" / "server.md").read_text()
    table = text.split("### Who may set what", 1)[1].split("\n\n| key |", 1)[1].split("\n\n", 1)[0]
    assert "| key |" + table == settings_table(), "run scripts/write_settings_table.py"
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines()[2:]}
    from ls_backend.server.trust import setting_annotations

    assert set(rows) == set(setting_annotations(BackendConfig))
    for path in PROJECT_SETTINGS:
        assert "server file, project" in rows[path], path
    for path in set(rows) - set(PROJECT_SETTINGS):
        assert "server file only" in rows[path], path


def test_a_project_chooses_within_what_the_server_allows() -> None:
    base = BackendConfig.from_mapping(
        {
            "llms": [{"name": "a", "kind": "hf", "model": "x"}, {"name": "b", "kind": "hf", "model": "y"}],
            "max_tasks": 500,
            "loop": {"n_trials": 50, "tuning_timeout_s": 10},
        }
    )
    assert [e["name"] for e in base.merged({"llms": ["b", "a"]}).llms] == ["b", "a"]
    chosen = base.merged(
        {"max_tasks": 20, "loop": {"n_trials": 5, "tuning_timeout_s": 2, "review_threshold": 0.4}}
    )
    assert chosen.max_tasks == 20 and chosen.learning.loop_config().n_trials == 5
    assert chosen.learning.review_threshold == 0.4 and base.learning.review_threshold == 0.7
    for extra, message in (
        ({"llms": ["c"]}, r"does not offer: \['c'\]; it offers \['a', 'b'\]"),
        ({"llms": ["a", "a"]}, "twice"),
        ({"llms": []}, "names of LLMs this server offers"),
        (
            {"llms": [{"name": "a", "kind": "openai", "base_url": "http://x"}]},
            "the server's config defines them",
        ),
        ({"max_tasks": 501}, "at most the server's 500"),
        ({"loop": {"n_trials": 51}}, "at most the server's 50"),
        ({"loop": {"tuning_timeout_s": None}}, "no limit"),
        ({"loop": {"poll_s": 1}}, "only be set in the server's config file"),
        ({"limits": {"max_projects": 1}}, "only be set in the server's config file"),
        ({"confidence_bands": [0, 1]}, "only be set in the server's config file"),
        ({"cascade": {"n_bins": 1000}}, r"cascade.n_bins must be an integer in \[1, 20\]"),
        ({"cascade": {"calibrator": "MS"}}, "one of"),
        ({"prompt": {"examples": [["a text", 3]]}}, "pair of strings"),
        ({"prompt": {"question": "q"}}, "unknown key 'prompt.question'"),
        ({"prompt": "chat"}, "prompt must be a mapping"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ):
        with pytest.raises(ConfigError, match=message):
            base.merged(extra)


_SETTING_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from([*PROJECT_SETTINGS, *SERVER_SETTINGS, "loop.enabled", "limits.max_projects", "llms"]),
        _SETTING_VALUES | st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
        max_size=4,
    )
)
def test_no_extra_params_reach_a_servers_setting(settings: dict) -> None:
    """Whatever a project sends, what it gets is the server's LLM entries, files, limits and server keys."""
    base = BackendConfig.from_mapping(
        {"llms": [{"name": "a", "kind": "hf", "model": "x"}, {"name": "b", "kind": "hf", "model": "y"}],
         "model_dir": "m", "oot_scores": "s", "max_tasks": 100}
    )  # fmt: skip
    extra: dict = {}
    for path, value in settings.items():
        section, _, key = path.rpartition(".")
        if section and not isinstance(extra.get(section), dict):
            extra[section] = {}
        (extra[section] if section else extra)[key] = value
    try:
        merged = base.merged(extra)
    except ConfigError:
        return
    catalog = [dict(e) for e in base.llms]
    assert all(dict(e) in catalog for e in merged.llms)
    assert (merged.model_dir, merged.oot_scores, merged.oot_tasks) == ("m", "s", None)
    assert merged.limits == base.limits and merged.confidence_bands == base.confidence_bands
    assert merged.max_tasks <= base.max_tasks
    for name in ("enabled", "poll_s", "catch_up_retry_s", "idle_stop_s", "tuning_process"):
        assert getattr(merged.learning, name) == getattr(base.learning, name)


def test_default_config_file_is_the_built_in_default() -> None:
    from ls_backend.llms.packaged import PACKAGED_MODELS
    from ls_backend.server.config import DEFAULT_LLMS

    config = load_config(REPO_ROOT / "config" / "default.yaml")
    assert [dict(e) for e in config.llms] == [dict(e) for e in DEFAULT_LLMS]
    assert all(e["model"] in PACKAGED_MODELS for e in DEFAULT_LLMS)
    assert config.cascade_settings == BackendConfig().cascade_settings  # the file spells out the defaults
    assert config.limits == BackendConfig().limits and config.learning.idle_stop_s == 600


@given(
    st.recursive(
        st.dictionaries(st.sampled_from("abc"), st.integers() | st.text(max_size=3), max_size=3),
        lambda children: st.dictionaries(st.sampled_from("abc"), children, max_size=3),
        max_leaves=10,
    ),
    st.dictionaries(st.sampled_from("abc"), st.integers(), max_size=3),
)
def test_deep_merge_properties(base: dict, override: dict) -> None:
    merged = deep_merge(base, override)
    for key, value in override.items():
        assert merged[key] == value  # the override wins at its own keys
    for key in set(base) - set(override):
        assert merged[key] == base[key]  # everything else of the base is kept
    assert deep_merge(base, {}) == base


# ---------------------------------------------------------------------------------------------------------------
# metrics


def reference_band(score: float, edges: list[float]) -> str:
    for lo, hi in itertools.pairwise(edges):
        last = hi == edges[-1]
        if lo <= score < hi or (last and lo <= score <= hi):
            return f"[{lo:g},{hi:g}{']' if last else ')'}"
    return f"[{edges[0]:g},{edges[1]:g})" if score < edges[0] else f"[{edges[-2]:g},{edges[-1]:g}]"


@given(st.floats(min_value=-0.5, max_value=1.5, allow_nan=False))
def test_confidence_band_matches_a_reference(score: float) -> None:
    edges = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert confidence_band(score, edges) == reference_band(score, edges)
    assert confidence_band(None, edges) == confidence_band(math.nan, edges) == "none"


@given(st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), max_size=50))
def test_latency_buckets_are_cumulative(values: list[float]) -> None:
    metrics = ServerMetrics()
    for v in values:
        metrics.latency.labels(endpoint="/p").observe(v)
    text = generate_latest(metrics.registry).decode()
    buckets = [
        (float(s.labels["le"]), s.value)
        for s in metric_samples(text, "lwc_http_request_duration_seconds_bucket")
    ]
    if not values:
        assert buckets == []
        return
    assert [le for le, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    counts = [c for _, c in buckets]
    assert counts == sorted(counts) and counts[-1] == len(values)
    for le, count in buckets:
        assert count == sum(v <= le for v in values)
    assert metric_value(text, "lwc_http_request_duration_seconds_count", endpoint="/p") == len(values)
    total = metric_value(text, "lwc_http_request_duration_seconds_sum", endpoint="/p")
    assert total == pytest.approx(sum(values))


def test_counters_are_thread_safe_and_labels_checked() -> None:
    metrics = ServerMetrics()

    def work() -> None:
        for _ in range(2000):
            metrics.llm_calls.labels(llm="a").inc()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.registry.get_sample_value("lwc_llm_calls_total", {"llm": "a"}) == 16000
    with pytest.raises(ValueError, match="label names"):
        metrics.llm_calls.labels(model="a")
    with pytest.raises(ValueError, match="non-negative"):
        metrics.llm_cost.labels(llm="a").inc(-1.0)


def test_label_values_are_escaped_and_read_back() -> None:
    llm = 'an "LLM" with a \\ and a\nnewline'
    metrics = ServerMetrics()
    metrics.llm_calls.labels(llm=llm).inc()
    metrics.llm_cost.labels(llm=llm).inc(0.25)
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "lwc_llm_calls_total", llm=llm) == 1
    assert metric_value(text, "lwc_llm_cost_total", llm=llm) == 0.25


def test_each_server_has_its_own_registry_without_created_series() -> None:
    first, second = ServerMetrics(), ServerMetrics()  # two apps in one process: no name clash
    first.requests.labels(endpoint="/predict", status="200").inc()
    first.latency.labels(endpoint="/predict").observe(0.1)
    labels = {"endpoint": "/predict", "status": "200"}
    assert first.registry.get_sample_value("lwc_http_requests_total", labels) == 1
    assert second.registry.get_sample_value("lwc_http_requests_total", labels) is None
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("lwc_")]
    assert "_created" not in generate_latest(first.registry).decode()
    # dropped on this server's registry only: prometheus_client's process-wide switch is left as it was
    other = CollectorRegistry()
    Counter("other_total", "another library's counter", registry=other).inc()
    assert other.get_sample_value("other_created") is not None


def test_llm_usage_books_calls_cache_hits_and_only_sensible_costs() -> None:
    state = SimpleNamespace(metrics=ServerMetrics())
    asked = ["a", "b", "c"]
    _record_llm_usage(  # type: ignore[arg-type]
        state,
        Prediction("yes", 0.9, "v", asked, llm_costs=(0.5, math.nan, 2.0), llm_called=(True, True, False)),
    )
    # only the total is known: booked under the chain; an infinite or negative one adds nothing
    _record_llm_usage(state, Prediction("yes", 0.9, "v", asked, cost=math.inf))  # type: ignore[arg-type]
    _record_llm_usage(state, Prediction("yes", 0.9, "v", ["a"], cost=-1.0))  # type: ignore[arg-type]
    registry = state.metrics.registry
    assert registry.get_sample_value("lwc_llm_calls_total", {"llm": "a"}) == 3
    assert registry.get_sample_value("lwc_llm_calls_total", {"llm": "c"}) == 1
    assert registry.get_sample_value("lwc_llm_cache_hits_total", {"llm": "c"}) == 1
    assert registry.get_sample_value("lwc_llm_cost_total", {"llm": "a"}) == 0.5
    assert registry.get_sample_value("lwc_llm_cost_total", {"llm": "b"}) == 0
    assert registry.get_sample_value("lwc_llm_cost_total", {"llm": "a+b+c"}) == 0
    assert registry.get_sample_value("lwc_cascade_depth_total", {"depth": "3"}) == 2
    assert registry.get_sample_value("lwc_answered_by_total", {"member": "c"}) == 2


# ---------------------------------------------------------------------------------------------------------------
# projects


def test_project_ids() -> None:
    assert parse_project_id("3.1795875050") == ("3.1795875050", 3)
    assert parse_project_id(7) == ("7", 7)
    for bad in ("", "abc", "3.x", "-1.2", None, True, 1.5):
        with pytest.raises(ProjectIdError):
            parse_project_id(bad)


def test_descriptions_from_webhooks_and_label_studio() -> None:
    assert plain_text("<p>Is this <b>spam</b>?&nbsp;</p>\n") == "Is this spam ?"
    calls: list[int] = []

    def slow_fetch(access: LabelStudioAccess, project: int, timeout: float) -> str | None:
        calls.append(project)
        time.sleep(0.2)
        return None if project == 2 else f"question of {project}"

    descriptions = ProjectDescriptions(LabelStudioAccess("http://ls:8080", "k"), fetch=slow_fetch)
    descriptions.prefetch(1)
    descriptions.prefetch(1)  # already being read: not read twice
    assert descriptions.get(1) is None  # does not block without a wait
    assert descriptions.get(1, wait=5) == "question of 1"
    descriptions.prefetch(1)
    assert calls == [1]
    descriptions.prefetch(2)
    assert descriptions.get(2, wait=5) is None
    descriptions.remember_from_payload(
        {"project": {"id": 2, "description": "", "expert_instruction": "<i>Hi?</i>"}}
    )
    assert descriptions.get(2) == "Hi?"
    assert ProjectDescriptions(None).get(5, wait=1) is None  # no access: nothing to read, no waiting


def test_fetching_from_a_label_studio_that_is_down_fails_fast() -> None:
    from ls_backend.server.projects import fetch_description

    started = time.perf_counter()
    with pytest.raises(Exception):  # noqa: B017 - whatever httpx raises for a refused connection
        fetch_description(LabelStudioAccess("http://127.0.0.1:9", "k" * 40), 1, timeout=2)
    assert time.perf_counter() - started < 5


# ---------------------------------------------------------------------------------------------------------------
# command line


def test_serve_command_line() -> None:
    from ls_backend.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.dev, args.config) == ("127.0.0.1", 9090, False, None)
    args = build_parser().parse_args(
        ["serve", "--host", "0.0.0.0", "--port", "9191", "--dev", "--no-warm-up"]
    )
    assert (args.host, args.port, args.dev, args.no_warm_up) == ("0.0.0.0", 9191, True, True)
    assert main(["serve", "--port", "0"]) == 2
    assert main(["serve", "--config", "/nonexistent/backend.yaml"]) == 2


def test_recent_predictions_keep_the_latest_per_task() -> None:
    from ls_backend.server.app import RecentPredictions

    recent = RecentPredictions(capacity=3)
    recent.add(1, [(1, {"v": "a"}), (2, {"v": "b"})])
    recent.add(2, [(1, {"v": "other project"})])
    recent.add(1, [(1, {"v": "a again"})])  # the same task again: replaced, and now the newest
    assert recent.get(1) == [{"v": "b"}, {"v": "a again"}] and recent.get(1, "1") == [{"v": "a again"}]
    recent.add(1, [(3, {"v": "c"})])  # over capacity: the oldest (project 1, task 2) goes
    assert recent.get(1) == [{"v": "a again"}, {"v": "c"}] and recent.get(2) == [{"v": "other project"}]
