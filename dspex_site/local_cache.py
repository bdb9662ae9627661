"""Per-process caches of rows every request reads: the hot path's lookups without a query each.

Token authentication (`dspex_site.authentication`) and the program an `execute` runs
(`programs.runtime`) read the same few rows on every request. Each process keeps what it read
for `DSPEX_LOCAL_CACHE_S` (default 1 s), so a busy process reads each row at most once per
interval instead of once per request:

- **in this process** a change is seen at once: the models' save/delete signals evict the entry
  (`evict`, `clear`), so whatever the process that made the change does next sees it;
- **in every other process** (web workers, Celery workers, other hosts) a change is seen within
  `DSPEX_LOCAL_CACHE_S`: an entry is never served older than that. Revoking a token or archiving
  a program therefore takes effect everywhere within a second, with no broadcast to lose.

A load that races an eviction (the row changed while it was being read) is not stored: each
cache counts its evictions and keeps a loaded value only if none happened meanwhile.
`DSPEX_LOCAL_CACHE_S = 0` turns every cache off (each read goes to the database).
"""

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache
from django.conf import settings

V = TypeVar("V")

_ALL: list["LocalCache"] = []


class LocalCache(Generic[V]):
    """A thread-safe TTL cache of one kind of row in this process (see the module docstring)."""

    def __init__(self, name: str, maxsize: int = 4096) -> None:
        self.name = name
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._ttl = -1.0
        self._entries: TTLCache[Hashable, V] = TTLCache(maxsize, 0)
        self._evictions = 0
        _ALL.append(self)

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        """The cached value of `key`, or `load()`'s (stored unless an eviction raced it)."""
        ttl = float(settings.DSPEX_LOCAL_CACHE_S)
        if ttl <= 0:
            return load()
        with self._lock:
            if ttl != self._ttl:  # the setting changed (tests): start afresh with the new interval
                self._entries, self._ttl = TTLCache(self._maxsize, ttl), ttl
            try:
                return self._entries[key]
            except KeyError:
                evictions = self._evictions
        value = load()
        with self._lock:
            if evictions == self._evictions:
                self._entries[key] = value
        return value

    def evict(self, key: Hashable) -> None:
        with self._lock:
            self._evictions += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._evictions += 1
            self._entries.clear()


def clear_all() -> None:
    """Forget every cached row of this process (tests, between cases)."""
    for cache in _ALL:
        cache.clear()
