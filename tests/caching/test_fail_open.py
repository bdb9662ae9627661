"""Fail open: a stalled or dead Redis never fails or hangs an execution; errors are counted.

Each test runs its own redis-server on a free port and stops only that one."""

import time

import pytest

from caching import store
from caching.registry import EMBEDDINGS, LLM
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
        errors = store._local_errors.get("llm", 0)
        assert errors == 1  # the lookup timed out; the write was skipped, not waited for
        response, elapsed = execute(api, program, "warm")
        assert response.json()["status"] == "succeeded" and lm_entry(response)["cache_hit"] is False
        assert store._local_errors.get("llm", 0) == errors  # skipped: no second timeout
    finally:
        llm_on_private_redis.resume()

    time.sleep(RETRY_AFTER_S + 0.1)  # past the retry window: the cache is tried again
    response, _ = execute(api, program, "warm")
    assert lm_entry(response)["cache_hit"] is True
    assert LLM.stats()["errors"] == 1  # the error seen while stalled reached the shared counter


def test_a_dead_redis_never_fails_an_execution(api, make_program, llm_on_private_redis):
    program = make_program()
    llm_on_private_redis.stop()
    for question in ("first", "second", "first"):
        response, elapsed = execute(api, program, question)
        assert response.json()["status"] == "succeeded"
        assert lm_entry(response)["cache_hit"] is False
        assert elapsed < BOUNDED_S
    assert store._local_errors.get("llm", 0) >= 1
    stats = {row["cache"]: row for row in api.get("/api/v1/cache/stats/").json()["caches"]}
    assert stats["llm"]["backend"] == "unavailable"


def test_caches_and_provider_admission_share_one_fail_open_client(settings, private_redis):
    """One implementation: a failure seen through any alias of a Redis server makes every client
    of that server in this process skip it for the retry window; other servers are unaffected."""
    from dspex_site import shared_redis
    from llm import resilience

    settings.CACHES = {
        **settings.CACHES,
        "default": redis_cache(private_redis.url),
        "llm": redis_cache(private_redis.url),
    }
    settings.DSPEX_CACHE_RETRY_AFTER_S = 60.0
    shared_redis.reset()
    assert resilience._redis.client() is not None and LLM.redis.client() is not None
    errors_before = resilience.REDIS_ERRORS._value.get()

    LLM.redis.failed("get", ConnectionError("refused"))

    assert LLM.redis.client() is None and resilience._redis.client() is None
    assert LLM.get("llm:any") is None  # a miss, not an error
    assert resilience.admit("openai", "https://api.example/v1").redis_ok is False  # admitted, unchecked
    assert resilience.REDIS_ERRORS._value.get() == errors_before  # counted by the cache, not twice
    assert EMBEDDINGS.redis.client() is not None  # another server (the suite's Redis): unaffected
    shared_redis.reset()
    assert resilience._redis.client() is not None
