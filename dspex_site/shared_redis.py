"""The one fail-open Redis client: what the shared caches (`caching.store`) and provider admission
(`llm.resilience`, `llm.budgets`) use to reach Redis.

Redis holds shared state that makes things cheaper or fairer (cached answers, breaker state,
rate-limit buckets, spend counters), never state a call cannot do without. So Redis trouble
never fails the work: the caller treats the error as a miss or a skipped check, and this process
then leaves that Redis server alone for `DSPEX_CACHE_RETRY_AFTER_S`, so a dead or stalled Redis
costs a run at most one (bounded) socket timeout rather than one per lookup. The window is per
server (the cache alias's location) and per `group` of clients: the caches share one, so one
cache's timeout spares the others; admission has its own, so its outages are counted in its terms
(`dspex_resilience_redis_error_total`) even when a cache lookup met the dead server first.
"""

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.signals import setting_changed

# (group, server location) -> monotonic time until which this process skips that server
_windows: dict[tuple[str, str], float] = {}
_lock = threading.Lock()
_backends: dict[str, Any] = {}
_backends_lock = threading.Lock()  # not `_lock`: a backend is looked up while that one is held


def backend_of(alias: str) -> Any:
    """The process's one backend of a cache alias (made on first use, again after a fork or a
    change of `CACHES`). Django keeps its backends per thread and context (asgiref's `Local`):
    every streamed run's threads, and every program run in a pooled thread, would build their own,
    each with new redis-py clients (~0.1 ms each, kept alive by the scripts registered on them).
    django-redis' backends and redis-py's clients are thread-safe."""
    backend = _backends.get(alias)
    if backend is None:
        with _backends_lock:
            backend = _backends.get(alias)
            if backend is None:
                backend = _backends[alias] = caches.create_connection(alias)
    return backend


def _forget_backends(**kwargs: Any) -> None:
    if kwargs.get("setting", "CACHES") == "CACHES":
        with _backends_lock:
            _backends.clear()


os.register_at_fork(after_in_child=_backends.clear)
setting_changed.connect(_forget_backends, dispatch_uid="shared-redis-backends")


class FailOpenRedis:
    """The raw redis-py client of a django-redis cache alias, skipped for a while after a failure.

    `on_failure(op, exc)` is called once per failure (to count and log it in the caller's terms);
    clients of one `group` share their skip window per server.
    """

    def __init__(self, alias: str, group: str, on_failure: Callable[[str, Exception], None] | None = None):
        self.alias, self.group = alias, group
        self.on_failure = on_failure
        self._scripts: dict[tuple[int, str], Any] = {}

    @property
    def backend(self) -> Any:
        return backend_of(self.alias)

    def _window(self, backend: Any = None) -> tuple[str, str]:
        return self.group, str(getattr(backend or self.backend, "_server", self.alias))

    def available(self, backend: Any = None) -> bool:
        """False while this process is skipping the alias' Redis after a failure."""
        return time.monotonic() >= _windows.get(self._window(backend), 0.0)

    def raw(self, backend: Any = None) -> Any | None:
        """The redis-py client whatever the window, or None when the alias is not Redis (the
        embedded mode's in-process cache)."""
        client = getattr(backend or self.backend, "client", None)
        if client is None or not hasattr(client, "get_client"):
            return None
        return client.get_client(write=True)

    def client(self, backend: Any = None) -> Any | None:
        """The redis-py client, or None when Redis is being skipped or the alias is not Redis."""
        backend = backend or self.backend
        return self.raw(backend) if self.available(backend) else None

    def script(self, client: Any, source: str) -> Any:
        """A Lua script registered on this client (EVALSHA, re-sent if Redis lost it)."""
        key = (id(client), source)
        with _lock:
            script = self._scripts.get(key)
            if script is None:
                script = self._scripts[key] = client.register_script(source)
        return script

    def failed(self, op: str, exc: Exception) -> None:
        """Record a failure: skip this Redis for the retry window, then tell the caller."""
        with _lock:
            _windows[self._window()] = time.monotonic() + settings.DSPEX_CACHE_RETRY_AFTER_S
        if self.on_failure is not None:
            self.on_failure(op, exc)

    @property
    def skip_until(self) -> float:
        return _windows.get(self._window(), 0.0)

    @skip_until.setter
    def skip_until(self, value: float) -> None:
        with _lock:
            _windows[self._window()] = value


def reset() -> None:
    """Forget every remembered Redis failure (tests, or an operator after fixing Redis)."""
    with _lock:
        _windows.clear()
