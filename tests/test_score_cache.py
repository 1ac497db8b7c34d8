"""The score cache (SQLite) and the cached batch loop ``score_items``.

The LLM in these tests is a real :class:`~ls_backend.llms.hf.HFLLM` around a tiny randomly initialised
LlamaForCausalLM with a word-level tokenizer, saved with ``save_pretrained`` and loaded back (no network, no
packaged weights); a wrapper counts the texts it is asked about.
"""

from __future__ import annotations

import multiprocessing
import random
import sqlite3
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ls_backend.llms.base import LLMError, ScoredBatch
from ls_backend.llms.cache import ScoreCache, text_hash
from ls_backend.llms.prompts import PromptTemplate
from ls_backend.llms.scoring import RemoteRequestError, RetryPolicy, TransientError, score_items
from tests.tiny_models import save_sms_llama


class CountingLLM:
    """Wraps an LLM and records every batch of texts it is asked about."""

    def __init__(self, inner, fail_after_batches: int | None = None) -> None:
        self.inner = inner
        self.name, self.revision, self.cost_model = inner.name, inner.revision, inner.cost_model
        self.batches: list[list[str]] = []
        self.fail_after_batches = fail_after_batches

    @property
    def n_texts(self) -> int:
        return sum(len(b) for b in self.batches)

    def score(self, texts: Sequence[str], prompt: PromptTemplate) -> ScoredBatch:
        if self.fail_after_batches is not None and len(self.batches) >= self.fail_after_batches:
            raise KeyboardInterrupt("simulated interruption")
        self.batches.append(list(texts))
        return self.inner.score(texts, prompt)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from ls_backend.llms.hf import HFLLM

    folder = save_sms_llama(tmp_path_factory.mktemp("tiny-llama"))
    return HFLLM.from_pretrained(str(folder), name="tiny", batch_size=4)


PROMPT = PromptTemplate(question="Is this SMS message spam?", classes=("yes", "no"))
TEXTS = [
    "free prize call now",
    "hi how are you",
    "win cash now",
    "see you later ok",
    "claim your prize",
    "thanks love",
    "going home",
]


# the cache -------------------------------------------------------------------------------------------------
def test_cache_round_trip_and_alignment(tmp_path):
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        logits = np.array([[0.25, -1.5], [3.0, 2.0], [-np.inf, 0.0]])
        cache.put_many(
            "m", "r1", "p", ["a", "b", "c"], np.array([0, 0, 1]), logits, np.array([0.1, 0.2, 0.0])
        )
        got = cache.get_many("m", "r1", "p", ["b", "zz", "a", "b", "c"])
        assert got[1] is None
        assert got[0] is not None and got[3] is not None
        np.testing.assert_array_equal(got[0].logits, got[3].logits)
        np.testing.assert_array_equal(got[2].logits, logits[0])
        np.testing.assert_array_equal(got[0].logits, logits[1])
        np.testing.assert_array_equal(got[4].logits, logits[2])  # -inf survives
        assert [g.answer for g in (got[2], got[0], got[4])] == [0, 0, 1]
        assert got[0].cost == 0.2 and got[0].created_at > 0
        assert len(cache) == 3


def test_cache_key_parts_separate_entries(tmp_path):
    with ScoreCache(tmp_path / "c.sqlite") as cache:
        cache.put_many("m", "r1", "p", ["a"], np.array([1]), np.array([[0.0, 1.0]]), np.array([1.0]))
        for llm, rev, prompt in (("other", "r1", "p"), ("m", "r2", "p"), ("m", "r1", "q")):
            assert cache.get_many(llm, rev, prompt, ["a"]) == [None]
        # replacing an entry keeps one row per key
        cache.put_many("m", "r1", "p", ["a"], np.array([0]), np.array([[5.0, 1.0]]), np.array([2.0]))
        (hit,) = cache.get_many("m", "r1", "p", ["a"])
        assert hit is not None and hit.answer == 0 and hit.cost == 2.0
        assert len(cache) == 1


def test_cache_file_is_wal_with_one_table_and_primary_key(tmp_path):
    path = tmp_path / "c.sqlite"
    ScoreCache(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["scores"]
    pk = [r[1] for r in conn.execute("PRAGMA table_info(scores)") if r[5] > 0]
    assert pk == ["llm", "revision", "prompt_hash", "text_hash"]
    conn.close()


def test_text_hash_is_sha256():
    import hashlib

    assert text_hash("héllo") == hashlib.sha256("héllo".encode()).hexdigest()


@pytest.mark.parametrize(
    ("answers", "logits", "costs", "message"),
    [
        ([0], [[0.0, 1.0]], [1.0, 2.0], "need answers"),
        ([0, 1], [[0.0, np.nan], [1.0, 0.0]], [1.0, 1.0], "NaN"),
        ([0, 2], [[0.0, 1.0], [1.0, 0.0]], [1.0, 1.0], "class indices"),
        ([0, 1], [[0.0, 1.0], [1.0, 0.0]], [1.0, -1.0], "costs"),
    ],
)
def test_put_many_rejects_bad_input(tmp_path, answers, logits, costs, message):
    with ScoreCache(tmp_path / "c.sqlite") as cache, pytest.raises(ValueError, match=message):
        cache.put_many("m", "r", "p", ["a", "b"], np.array(answers), np.array(logits), np.array(costs))


def test_corrupt_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a usable SQLite database"):
        ScoreCache(path)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(max_size=30), st.lists(st.floats(allow_nan=False, width=64), min_size=3, max_size=3)
        ),
        min_size=1,
        max_size=20,
        unique_by=lambda x: x[0],
    )
)
def test_cache_round_trips_any_text_and_float(rows):
    texts = [t for t, _ in rows]
    logits = np.array([v for _, v in rows])
    answers = np.arange(len(rows)) % 3
    with ScoreCache(":memory:") as cache:
        cache.put_many("m", "r", "p", texts, answers, logits, np.zeros(len(rows)))
        got = cache.get_many("m", "r", "p", texts[::-1])
    np.testing.assert_array_equal(np.stack([g.logits for g in got]), logits[::-1])
    assert [g.answer for g in got] == answers[::-1].tolist()


def _write_from_process(path: str, worker: int, n: int) -> None:
    with ScoreCache(path) as cache:
        for i in range(n):
            cache.put_many(
                "m",
                "r",
                "p",
                [f"w{worker}-{i}"],
                np.array([worker % 2]),
                np.array([[float(i), 0.0]]),
                np.array([1.0]),
            )


def test_several_processes_share_one_cache_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_from_process, args=(path, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with ScoreCache(path) as cache:
        got = cache.get_many("m", "r", "p", [f"w{w}-{i}" for w in range(3) for i in range(25)])
    assert all(g is not None for g in got)
    assert [g.logits[0] for g in got] == [float(i) for _ in range(3) for i in range(25)]


# the batch loop ----------------------------------------------------------------------------------------------
def test_second_run_makes_no_llm_call(tiny_llm, tmp_path):
    cache_path = tmp_path / "scores.sqlite"
    first_llm = CountingLLM(tiny_llm)
    with ScoreCache(cache_path) as cache:
        first = score_items(first_llm, PROMPT, TEXTS, cache=cache, batch_size=3)
    assert first_llm.n_texts == len(TEXTS) and len(first_llm.batches) == 3
    assert first.meta["n_called"] == len(TEXTS) and first.meta["n_cached"] == 0

    second_llm = CountingLLM(tiny_llm)
    with ScoreCache(cache_path) as cache:  # a new connection, as a new process would open
        second = score_items(second_llm, PROMPT, TEXTS, cache=cache, batch_size=3)
    assert second_llm.batches == []
    assert second.meta["n_called"] == 0 and second.meta["n_cached"] == len(TEXTS)
    np.testing.assert_array_equal(second.logits, first.logits)
    np.testing.assert_array_equal(second.answers, first.answers)
    np.testing.assert_array_equal(second.costs, first.costs)


def test_results_match_the_llm_called_directly(tiny_llm):
    direct = tiny_llm.score(TEXTS, PROMPT)
    looped = score_items(tiny_llm, PROMPT, TEXTS, cache=ScoreCache(":memory:"), batch_size=2)
    np.testing.assert_allclose(looped.logits, direct.logits, atol=1e-5)
    np.testing.assert_array_equal(looped.answers, direct.answers)


def test_only_misses_are_sent_and_duplicates_once(tiny_llm):
    cache = ScoreCache(":memory:")
    score_items(tiny_llm, PROMPT, TEXTS[:3], cache=cache)
    counting = CountingLLM(tiny_llm)
    texts = [TEXTS[0], TEXTS[4], TEXTS[4], TEXTS[1], TEXTS[5], TEXTS[4]]
    result = score_items(counting, PROMPT, texts, cache=cache, batch_size=8)
    assert counting.batches == [[TEXTS[4], TEXTS[5]]]
    assert result.meta == {**result.meta, "n_called": 2, "n_cached": 2}
    np.testing.assert_array_equal(result.logits[1], result.logits[2])
    np.testing.assert_array_equal(result.logits[1], result.logits[5])
    # another prompt is another key: everything is asked again
    other = PROMPT.replace(question="Is this SMS message a scam?")
    counting.batches.clear()
    score_items(counting, other, texts, cache=cache)
    assert counting.n_texts == 4


def test_interrupted_run_resumes_from_finished_batches(tiny_llm, tmp_path):
    path = tmp_path / "c.sqlite"
    interrupted = CountingLLM(tiny_llm, fail_after_batches=2)
    with ScoreCache(path) as cache, pytest.raises(KeyboardInterrupt):
        score_items(interrupted, PROMPT, TEXTS, cache=cache, batch_size=2)
    done = [t for b in interrupted.batches for t in b]
    assert len(done) == 4
    resumed = CountingLLM(tiny_llm)
    with ScoreCache(path) as cache:
        result = score_items(resumed, PROMPT, TEXTS, cache=cache, batch_size=2, progress="resume")
    assert sorted(resumed.batches[0] + resumed.batches[1]) == sorted(set(TEXTS) - set(done))
    assert result.meta["n_cached"] == 4 and result.meta["n_called"] == 3


def test_without_cache_every_distinct_text_is_asked(tiny_llm):
    counting = CountingLLM(tiny_llm)
    score_items(counting, PROMPT, TEXTS + TEXTS[:2], batch_size=4)
    assert counting.n_texts == len(TEXTS)


def test_score_items_rejects_bad_input(tiny_llm):
    with pytest.raises(ValueError, match="no texts"):
        score_items(tiny_llm, PROMPT, [])
    with pytest.raises(ValueError, match="batch_size"):
        score_items(tiny_llm, PROMPT, ["a"], batch_size=0)
    with pytest.raises(TypeError, match="item 1"):
        score_items(tiny_llm, PROMPT, ["a", 3])  # type: ignore[list-item]


def test_llm_returning_the_wrong_number_of_results_is_an_error(tiny_llm):
    class Short(CountingLLM):
        def score(self, texts, prompt):
            return self.inner.score(list(texts)[:-1], prompt)

    with pytest.raises(LLMError, match="returned 1 results"):
        score_items(Short(tiny_llm), PROMPT, TEXTS[:2])


# retries -----------------------------------------------------------------------------------------------------
def test_retry_policy_backs_off_exponentially_with_jitter_then_succeeds():
    sleeps: list[float] = []
    calls = iter(
        [TransientError("busy"), TransientError("busy"), TransientError("busy", retry_after=7.0), "ok"]
    )

    def flaky():
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    policy = RetryPolicy(max_attempts=5, base_delay=1.0, max_delay=3.0)
    assert policy.call(flaky, "test", sleep=sleeps.append, rng=random.Random(0)) == "ok"
    assert len(sleeps) == 3
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0
    assert sleeps[2] == 7.0  # Retry-After is longer than the capped backoff


def test_retry_policy_gives_up_after_max_attempts():
    sleeps: list[float] = []

    def always_busy():
        raise TransientError("HTTP 503")

    with pytest.raises(RemoteRequestError, match="gave up after 3 attempts: HTTP 503"):
        RetryPolicy(max_attempts=3).call(always_busy, "test", sleep=sleeps.append)
    assert len(sleeps) == 2


def test_retry_policy_does_not_retry_other_errors():
    sleeps: list[float] = []

    def broken():
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        RetryPolicy().call(broken, "test", sleep=sleeps.append)
    assert sleeps == []


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 20), st.floats(0.01, 10), st.floats(0.01, 100), st.integers(0, 2**32))
def test_backoff_delay_is_bounded(attempt, base, cap, seed):
    delay = RetryPolicy(base_delay=base, max_delay=cap).delay(attempt, random.Random(seed))
    assert 0 <= delay <= min(cap, base * 2**attempt)


def test_retry_policy_from_config():
    assert RetryPolicy.from_value({"max_attempts": 2}).max_attempts == 2
    with pytest.raises(ValueError, match="unknown field"):
        RetryPolicy.from_value({"attempts": 2})
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
