"""Fail open: a stalled or dead Redis never fails or hangs an execution; errors are counted.

Each test runs its own redis-server on a free port and stops only that one."""

import time

import pytest

from caching import store
from caching.registry import ANSWERS, EMBEDDINGS, LLM, OPTIMIZATIONS
from tests.caching.conftest import redis_cache

pytestmark = pytest.mark.django_db

RETRY_AFTER_S = 3.0
# Far below "hanging" (an unbounded socket would wait forever) yet robust on a loaded machine:
# the bound that matters is one 0.3 s socket timeout per execution, not the run's own time.
BOUNDED_S = 5.0


def execute(api, program, question):
    started = time.monotonic()
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": question}, "wait": True},
        format="json",
    )
    return response, time.monotonic() - started


def local_errors() -> int:
    """Errors counted in this process by the caches on the `llm` Redis: the execution answers
    (looked up first, so they meet an outage first) and the LLM responses."""
    return store._local_errors.get("llm", 0) + store._local_errors.get("answers", 0)


def lm_entry(response):
    return next(e for e in response.json()["trace"] if e["kind"] == "lm")


@pytest.fixture
def llm_on_private_redis(settings, private_redis):
    settings.CACHES = {**settings.CACHES, "llm": redis_cache(private_redis.url, timeout=0.3)}
    settings.DSPEX_CACHE_RETRY_AFTER_S = RETRY_AFTER_S
    return private_redis


def test_a_stalled_redis_costs_at_most_a_bounded_timeout_and_is_counted(
    api, make_program, llm_on_private_redis
):
    program = make_program()
    execute(api, program, "warm")
    response, _ = execute(api, program, "warm")
    assert lm_entry(response)["cache_hit"] is True  # the cache really is that Redis

    llm_on_private_redis.pause()
    try:
        response, elapsed = execute(api, program, "while stalled")
        assert response.status_code == 200 and response.json()["status"] == "succeeded"
        assert lm_entry(response)["cache_hit"] is False
        assert elapsed < BOUNDED_S
        errors = local_errors()
        assert errors == 1  # one lookup timed out; the others and the write were skipped, not waited for
        response, elapsed = execute(api, program, "warm")
        assert response.json()["status"] == "succeeded" and lm_entry(response)["cache_hit"] is False
        assert local_errors() == errors  # skipped: no second timeout
    finally:
        llm_on_private_redis.resume()

    time.sleep(RETRY_AFTER_S + 0.1)  # past the retry window: the cache is tried again
    response, _ = execute(api, program, "warm")
    assert lm_entry(response)["cache_hit"] is True
    # The error seen while stalled reached the shared counter (of the cache that met it).
    assert LLM.stats()["errors"] + ANSWERS.stats()["errors"] == 1


def test_a_dead_redis_never_fails_an_execution(api, make_program, llm_on_private_redis):
    program = make_program()
    llm_on_private_redis.stop()
    for question in ("first", "second", "first"):
        response, elapsed = execute(api, program, question)
        assert response.json()["status"] == "succeeded"
        assert lm_entry(response)["cache_hit"] is False
        assert elapsed < BOUNDED_S
    assert local_errors() >= 1
    stats = {row["cache"]: row for row in api.get("/api/v1/cache/stats/").json()["caches"]}
    assert stats["llm"]["backend"] == "unavailable"


def test_one_fail_open_client_with_a_window_per_server_for_the_caches_and_one_for_admission(
    settings, private_redis
):
    """One implementation (`dspex_site.shared_redis`): a failure seen by one cache makes every
    cache on that Redis server skip it for the retry window, but not caches on other servers, and
    not admission, which meets the outage itself and counts it as its own."""
    from dspex_site import shared_redis
    from llm import resilience

    settings.CACHES = {
        **settings.CACHES,
        "default": redis_cache(private_redis.url),
        "llm": redis_cache(private_redis.url),
        "optimizations": redis_cache(private_redis.url),
    }
    settings.DSPEX_CACHE_RETRY_AFTER_S = 60.0
    shared_redis.reset()
    assert LLM.redis.client() is not None and OPTIMIZATIONS.redis.client() is not None
    errors_before = resilience.REDIS_ERRORS._value.get()

    LLM.redis.failed("get", ConnectionError("refused"))

    assert LLM.redis.client() is None and OPTIMIZATIONS.redis.client() is None
    assert OPTIMIZATIONS.get("opt:1") is None  # a miss, without a round trip
    assert EMBEDDINGS.redis.client() is not None  # the suite's own Redis: another server
    assert resilience._redis.client() is not None
    assert resilience.REDIS_ERRORS._value.get() == errors_before

    private_redis.stop()
    assert resilience.admit("openai", "https://api.example/v1").redis_ok is False  # admitted, unchecked
    assert resilience.REDIS_ERRORS._value.get() == errors_before + 1
    assert resilience._redis.client() is None
    shared_redis.reset()
    assert LLM.redis.client() is not None and resilience._redis.client() is not None
