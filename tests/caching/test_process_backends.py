"""One cache backend (and one redis-py client) per alias per process for the shared caches and
admission (`dspex_site.shared_redis.backend_of`), whatever thread or context asks: Django's own
are made per thread and context, so every streamed run's threads built theirs afresh, and the
scripts registered on each new client kept it alive."""

import concurrent.futures
import contextvars
import threading

import pytest

from caching.registry import LLM
from dspex_site import shared_redis
from llm import gateway, resilience
from llm.routing import route_for
from tests.caching.conftest import redis_cache

pytestmark = pytest.mark.django_db


def test_every_thread_and_context_gets_the_same_backend_and_client():
    def look() -> tuple[int, int]:
        backend = shared_redis.backend_of("llm")
        return id(backend), id(LLM.redis.raw())

    here = look()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        there = list(pool.map(lambda _: look(), range(8)))
    fresh = []
    thread = threading.Thread(target=lambda: fresh.append(contextvars.Context().run(look)))
    thread.start()
    thread.join()
    assert set(there) == {here} and fresh == [here]


def test_a_change_of_caches_gives_a_new_backend(settings, private_redis):
    before = shared_redis.backend_of("llm")
    settings.CACHES = {**settings.CACHES, "llm": redis_cache(private_redis.url)}
    after = shared_redis.backend_of("llm")
    assert after is not before and private_redis.url in str(after._server)


def test_admission_from_many_new_threads_registers_its_scripts_once(settings):
    settings.DSPEX_PROVIDERS = {
        "p": {"kind": "openai", "api_base": "http://127.0.0.1:9/v1", "limits": {"failure_threshold": 5}}
    }
    endpoint = route_for("p/m").endpoint

    def admit() -> None:
        ticket = resilience.admit("p", endpoint, estimate=10)
        ticket.finish(failure=None, tokens=10, cost_usd=0.0)

    gateway.reset()
    admit()
    registered = len(resilience._redis._scripts)
    for _ in range(10):  # a new thread each time, as every streamed run's threads are
        thread = threading.Thread(target=admit)
        thread.start()
        thread.join()
    assert len(resilience._redis._scripts) == registered
