"""The named caches and their limits (README "Caches, embeddings and retrieval"), read from
settings at use time."""

from array import array

from django.conf import settings

from caching.store import BoundedCache


def vector_dumps(vector: list[float]) -> bytes:
    """Embeddings are stored as float32 bytes: a quarter of their JSON size, and exact for float32."""
    return array("f", vector).tobytes()


def vector_loads(data: bytes) -> list[float]:
    values = array("f")
    values.frombytes(data)
    return values.tolist()


LLM = BoundedCache(
    "llm",
    "llm",
    ttl_s=lambda: settings.DSPEX_LLM_CACHE_TTL_S,
    max_entries=lambda: settings.DSPEX_LLM_CACHE_MAX_ENTRIES,
    max_bytes=lambda: settings.DSPEX_LLM_CACHE_MAX_BYTES,
)
# Kept execution answers (executions.answers): beside the LLM responses they replay, with the
# same limits of their own; purging `llm` purges them too (caching.operations.purge).
ANSWERS = BoundedCache(
    "answers",
    "llm",
    ttl_s=lambda: settings.DSPEX_LLM_CACHE_TTL_S,
    max_entries=lambda: settings.DSPEX_LLM_CACHE_MAX_ENTRIES,
    max_bytes=lambda: settings.DSPEX_LLM_CACHE_MAX_BYTES,
)
EMBEDDINGS = BoundedCache(
    "embeddings",
    "embeddings",
    ttl_s=lambda: settings.DSPEX_EMBEDDING_CACHE_TTL_S,
    max_entries=lambda: settings.DSPEX_EMBEDDING_CACHE_MAX_ENTRIES,
    dumps=vector_dumps,
    loads=vector_loads,
)
OPTIMIZATIONS = BoundedCache(
    "optimizations", "optimizations", ttl_s=lambda: settings.DSPEX_OPTIMIZATION_CACHE_TTL_S
)

CACHES: dict[str, BoundedCache] = {cache.name: cache for cache in (LLM, ANSWERS, EMBEDDINGS, OPTIMIZATIONS)}
