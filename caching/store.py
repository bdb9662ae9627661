"""A bounded, shared, fail-open key-value cache on a django-redis alias, with stats.

Each named cache (`llm`, `embeddings`, `optimizations`) keeps, next to its entries:

* `cache:{name}:lru`  sorted set: entry key -> last-use sequence number (a counter in the stats
  hash, not a clock: two uses in one millisecond must still be ordered); the eviction order;
* `cache:{name}:exp`  sorted set: entry key -> expiry (ms), so expired entries leave the index;
* `cache:{name}:meta` hash: entry key -> "size cost tokens" (bytes stored, USD and tokens a hit
  saves; cost "-" when unknown);
* `cache:{name}:stats` hash: hits, misses, errors, evictions, bytes, saved_usd, saved_tokens.

Reads and writes are Lua scripts, so a lookup (value + LRU touch + hit/miss/saved counters) is
one round trip and a write (store + index + trim to the entry and byte limits) is atomic across
every process. Limits are ours rather than Redis' `maxmemory-policy`, because the same Redis
holds the Celery broker's queues, which an allkeys-LRU policy would evict.

Fail open: any Redis error (refused, timed out after the bounded socket timeout) makes the call
behave as a miss or a skipped write, is counted, and makes this process skip the cache for
`DSPEX_CACHE_RETRY_AFTER_S`, so a stalled Redis costs a run at most one timeout (the client and
its window are `dspex_site.shared_redis`, shared with provider admission).
"""

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dspex_site import shared_redis
from dspex_site.shared_redis import FailOpenRedis, backend_of
from monitoring import telemetry

logger = logging.getLogger(__name__)

# Lua's unpack() and Redis' argument lists are bounded: batches are split into chunks of this.
CHUNK = 500

_GET = """
local vals = redis.call('MGET', unpack(KEYS, 5))
local metas = {}
local hits, misses, saved, tokens = 0, 0, 0, 0
for i, v in ipairs(vals) do
  local k = KEYS[i + 4]
  if v then
    hits = hits + 1
    redis.call('ZADD', KEYS[1], 'XX', redis.call('HINCRBY', KEYS[4], 'lru_seq', 1), k)
    local m = redis.call('HGET', KEYS[3], k)
    metas[i] = m or ''
    if m then
      local _, cost, tok = string.match(m, '^(%S+) (%S+) (%S+)$')
      if cost and cost ~= '-' then saved = saved + tonumber(cost) end
      if tok then tokens = tokens + tonumber(tok) end
    end
  else
    misses = misses + 1
    metas[i] = ''
  end
end
if hits > 0 then redis.call('HINCRBY', KEYS[4], 'hits', hits) end
if misses > 0 then redis.call('HINCRBY', KEYS[4], 'misses', misses) end
if saved > 0 then redis.call('HINCRBYFLOAT', KEYS[4], 'saved_usd', saved) end
if tokens > 0 then redis.call('HINCRBY', KEYS[4], 'saved_tokens', tokens) end
return {vals, metas}
"""

# KEYS: lru, exp, meta, stats, entry keys...; ARGV: now_ms, ttl_ms, max_entries (0 = none),
# max_bytes (0 = none), then value and meta for each entry key.
_PUT = """
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_entries, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local function forget(k)
  local m = redis.call('HGET', KEYS[3], k)
  if m then
    local size = tonumber(string.match(m, '^(%S+)'))
    redis.call('HINCRBY', KEYS[4], 'bytes', -size)
    redis.call('HDEL', KEYS[3], k)
  end
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[2], k)
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)) do
  forget(k)
  redis.call('DEL', k)
end
for i = 5, #KEYS do
  local k = KEYS[i]
  local v, m = ARGV[3 + (i - 4) * 2], ARGV[4 + (i - 4) * 2]
  forget(k)
  redis.call('SET', k, v, 'PX', ttl)
  redis.call('ZADD', KEYS[1], redis.call('HINCRBY', KEYS[4], 'lru_seq', 1), k)
  redis.call('ZADD', KEYS[2], now + ttl, k)
  redis.call('HSET', KEYS[3], k, m)
  redis.call('HINCRBY', KEYS[4], 'bytes', #v)
end
local evicted = 0
while true do
  local n = redis.call('ZCARD', KEYS[1])
  local b = tonumber(redis.call('HGET', KEYS[4], 'bytes') or '0')
  if n == 0 or ((max_entries == 0 or n <= max_entries) and (max_bytes == 0 or b <= max_bytes)) then
    break
  end
  local victim = redis.call('ZPOPMIN', KEYS[1])[1]
  forget(victim)
  redis.call('DEL', victim)
  evicted = evicted + 1
end
if evicted > 0 then redis.call('HINCRBY', KEYS[4], 'evictions', evicted) end
return evicted
"""


@dataclass(frozen=True)
class Hit:
    """A value found in the cache, with what serving it saved (cost None = unknown price)."""

    value: Any
    cost_usd: float | None = None
    tokens: int = 0


class BoundedCache:
    """One named cache on a django-redis alias (see the module docstring)."""

    def __init__(
        self,
        name: str,
        alias: str,
        ttl_s: Callable[[], int],
        max_entries: Callable[[], int] = lambda: 0,
        max_bytes: Callable[[], int] = lambda: 0,
        dumps: Callable[[Any], bytes] | None = None,
        loads: Callable[[bytes], Any] | None = None,
    ):
        self.name, self.alias = name, alias
        self._ttl_s, self._max_entries, self._max_bytes = ttl_s, max_entries, max_bytes
        self.dumps = dumps or _json_dumps
        self.loads = loads or _json_loads
        self.redis = FailOpenRedis(alias, "caches", on_failure=self._count_failure)
        self._made_index: tuple[tuple, list[str]] | None = None

    # --- plumbing ------------------------------------------------------------------------------
    @property
    def backend(self) -> Any:
        return backend_of(self.alias)

    def _redis(self, backend: Any = None) -> Any | None:
        """The raw redis-py client, or None for a non-Redis backend (embedded mode)."""
        return self.redis.raw(backend)

    def _index_keys(self, backend: Any = None) -> list[str]:
        backend = backend or self.backend
        # Built once per prefix and version: every lookup needs them (the hot path's cache reads).
        made = (backend.key_prefix, backend.version, backend.key_func)
        if self._made_index is None or self._made_index[0] != made:
            keys = [backend.make_key(f"cache:{self.name}:{part}") for part in ("lru", "exp", "meta", "stats")]
            self._made_index = (made, keys)
        return list(self._made_index[1])

    def _script(self, client: Any, source: str) -> Any:
        return self.redis.script(client, source)

    def _available(self, backend: Any = None) -> bool:
        return self.redis.available(backend)

    def _failed(self, op: str, exc: Exception) -> None:
        self.redis.failed(op, exc)

    def _count_failure(self, op: str, exc: Exception) -> None:
        _local_errors[self.name] = _local_errors.get(self.name, 0) + 1
        telemetry.emit("cache.error", {}, {"cache": self.name, "op": op})
        logger.warning("%s cache %s failed, continuing without cache: %s", self.name, op, type(exc).__name__)

    def _flush_errors(self, client: Any, stats_key: str) -> None:
        """Errors counted while Redis was unreachable land in the shared counter once it is back."""
        count = _local_errors.pop(self.name, 0)
        if count:
            client.hincrby(stats_key, "errors", count)

    # --- reads ---------------------------------------------------------------------------------
    def get(self, key: str) -> Hit | None:
        return self.get_many([key])[0]

    def get_many(self, keys: Sequence[str]) -> list[Hit | None]:
        """Look every key up in as few round trips as possible; misses (and errors) are None."""
        if not keys:
            return []
        backend = self.backend  # resolved once
        if not self._available(backend):
            return [None] * len(keys)
        try:
            client = self._redis(backend)
            if client is None:
                return self._plain_get_many(keys)
            index = self._index_keys(backend)
            script = self._script(client, _GET)
            found: list[Hit | None] = []
            for start in range(0, len(keys), CHUNK):
                chunk = [backend.make_key(key) for key in keys[start : start + CHUNK]]
                values, metas = script(keys=[*index, *chunk], args=[_now_ms()], client=client)
                found.extend(self._hit(value, meta) for value, meta in zip(values, metas, strict=True))
            self._flush_errors(client, index[3])
        except Exception as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._emit(found)
        return found

    def _hit(self, value: bytes | None, meta: bytes | str) -> Hit | None:
        if value is None:
            return None
        _size, cost, tokens = (meta.decode() if isinstance(meta, bytes) else meta or "0 - 0").split(" ")
        return Hit(self.loads(value), None if cost == "-" else float(cost), int(tokens))

    def _emit(self, found: list[Hit | None]) -> None:
        for hit in found:
            telemetry.emit("cache.hit" if hit is not None else "cache.miss", {}, {"cache": self.name})

    # --- writes --------------------------------------------------------------------------------
    def set(self, key: str, value: Any, cost_usd: float | None = None, tokens: int = 0) -> None:
        self.set_many([(key, value, cost_usd, tokens)])

    def set_many(self, items: Sequence[tuple[str, Any, float | None, int]]) -> None:
        """Store entries (key, value, cost a hit saves, tokens a hit saves) and trim to the limits."""
        if not items or not self._available():
            return
        limit_bytes = int(self._max_bytes() or 0)
        payloads = []
        for key, value, cost, tokens in items:
            try:
                data = self.dumps(value)
            except (TypeError, ValueError) as exc:  # not storable: a caller's problem, not Redis'
                logger.warning("%s cache: value for a key is not serializable: %s", self.name, exc)
                continue
            if limit_bytes and len(data) > limit_bytes:
                continue  # larger than the whole cache: storing it would evict everything
            meta = f"{len(data)} {'-' if cost is None else repr(float(cost))} {int(tokens)}"
            payloads.append((key, data, meta))
        if payloads:
            self._write(payloads, limit_bytes)

    def _write(self, payloads: list[tuple[str, bytes, str]], limit_bytes: int) -> None:
        try:
            client = self._redis()
            if client is None:
                self.backend.set_many({key: data for key, data, _meta in payloads}, self._ttl_s())
                return
            head = [_now_ms(), max(1, int(self._ttl_s() * 1000)), int(self._max_entries() or 0), limit_bytes]
            index = self._index_keys()
            script = self._script(client, _PUT)
            for start in range(0, len(payloads), CHUNK):
                chunk = payloads[start : start + CHUNK]
                args = [*head, *(part for _key, data, meta in chunk for part in (data, meta))]
                keys = [self.backend.make_key(key) for key, _data, _meta in chunk]
                script(keys=[*index, *keys], args=args, client=client)
        except Exception as exc:
            self._failed("put", exc)

    # --- operations ----------------------------------------------------------------------------
    def clear(self) -> int:
        """Delete every entry of this cache (not the counters); returns how many were indexed."""
        client = self._redis()
        if client is None:
            self.backend.clear()
            return 0
        lru, exp, meta, stats = self._index_keys()
        members = client.zrange(lru, 0, -1)
        for start in range(0, len(members), CHUNK):
            client.delete(*members[start : start + CHUNK])
        # Entries written before the index existed (or outside it) share the key prefix.
        prefix = _KEY_PREFIXES.get(self.name)
        if prefix:
            self.backend.delete_pattern(f"{prefix}:*")
        client.delete(lru, exp, meta)
        client.hset(stats, "bytes", 0)
        return len(members)

    def stats(self) -> dict[str, Any]:
        """Counters shared by every process, plus entries and bytes now held."""
        base = {"cache": self.name, "ttl_s": self._ttl_s()}
        base.update(max_entries=self._max_entries() or None, max_bytes=self._max_bytes() or None)
        client = self._redis()
        if client is None:
            return {**base, "backend": "local", "errors": _local_errors.get(self.name, 0)}
        lru, exp, _meta, stats_key = self._index_keys()
        self._flush_errors(client, stats_key)
        # Expired entries leave the index on writes; do it here too so `entries` is current.
        for key in client.zrangebyscore(exp, "-inf", _now_ms(), start=0, num=1000):
            self._forget_expired(client, key)
        raw = {k.decode(): v.decode() for k, v in client.hgetall(stats_key).items()}
        hits, misses = int(raw.get("hits", 0)), int(raw.get("misses", 0))
        return {
            **base,
            "backend": "redis",
            "hits": hits,
            "misses": misses,
            "hit_ratio": round(hits / (hits + misses), 4) if hits + misses else None,
            "errors": int(raw.get("errors", 0)),
            "evictions": int(raw.get("evictions", 0)),
            "entries": client.zcard(lru),
            "memory_bytes": int(raw.get("bytes", 0)),
            "saved_usd": round(float(raw.get("saved_usd", 0)), 8),
            "saved_tokens": int(raw.get("saved_tokens", 0)),
        }

    def _forget_expired(self, client: Any, key: bytes) -> None:
        lru, exp, meta, stats_key = self._index_keys()
        script = self._script(client, _FORGET)
        script(keys=[lru, exp, meta, stats_key, key], args=[], client=client)

    def reset_stats(self) -> None:
        client = self._redis()
        if client is not None:
            stats_key = self._index_keys()[3]
            size = client.hget(stats_key, "bytes")
            client.delete(stats_key)
            if size is not None:
                client.hset(stats_key, "bytes", size)

    # --- non-Redis backends (embedded single-process mode) ------------------------------------
    def _plain_get_many(self, keys: Sequence[str]) -> list[Hit | None]:
        values = self.backend.get_many(list(keys))
        return [Hit(self.loads(values[key])) if key in values else None for key in keys]


_FORGET = """
local m = redis.call('HGET', KEYS[3], KEYS[5])
if m then
  redis.call('HINCRBY', KEYS[4], 'bytes', -tonumber(string.match(m, '^(%S+)')))
  redis.call('HDEL', KEYS[3], KEYS[5])
end
redis.call('ZREM', KEYS[1], KEYS[5])
redis.call('ZREM', KEYS[2], KEYS[5])
redis.call('DEL', KEYS[5])
return 1
"""

# The key namespace of each cache's entries (README "Caches, embeddings and retrieval").
_KEY_PREFIXES = {"llm": "llm", "embeddings": "emb", "optimizations": "opt"}

# Errors this process saw that are not yet in Redis' shared counter (Redis was down).
_local_errors: dict[str, int] = {}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _json_loads(data: bytes) -> Any:
    return json.loads(data)


def reset_breakers() -> None:
    """Forget remembered Redis failures (tests, or an operator after fixing Redis)."""
    shared_redis.reset()
