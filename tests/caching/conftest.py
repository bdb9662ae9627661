"""Fixtures for the caching tests: clean per-process state (`private_redis` is in tests/conftest.py)."""

from collections.abc import Iterator

import pytest


def redis_cache(url: str, timeout: float = 0.3) -> dict:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": "dspex",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout},
    }


@pytest.fixture(autouse=True)
def _fresh_caching_state() -> Iterator[None]:
    from caching import store
    from llm import gateway
    from programs import retrieval

    store.reset_breakers()
    store._local_errors.clear()
    gateway.reset()
    retrieval._matrices.clear()
    yield
    store.reset_breakers()
    store._local_errors.clear()
