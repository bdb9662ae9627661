"""The embedding cache, in front of the gateway: `embed(texts)` looks every text up in one
batched round trip and sends only the misses to `llm.gateway.embed`, in batches. A cached
embedding is not a provider call: it costs nothing and reaches no budget, breaker or trace.

Key: `emb:{model}:{sha256(text)}` (7 days, 50,000 entries, LRU; see `caching.store`). Models
served over HTTP name their endpoint too (`openai/text-embedding-3-small@1a2b3c4d`): two servers
serving one model name do not share vectors. The API key is never part of a key. Vectors are
stored as float32, and every vector this module returns has been through float32, so a vector
is the same whether it was computed now or read from the cache.
"""

import hashlib
from array import array
from collections.abc import Sequence

from django.conf import settings

from caching.registry import EMBEDDINGS
from llm import gateway
from llm.routing import Route, embedding_route_for


def cache_id(route: Route) -> str:
    """The model part of a key: the model, plus a hash of the endpoint for HTTP models."""
    if route.lm15_provider is None:  # in-process: the same vectors wherever it runs
        return route.model
    return f"{route.model}@{hashlib.sha256(route.endpoint.encode()).hexdigest()[:8]}"


def key_for(model: str, text: str) -> str:
    return f"emb:{cache_id(embedding_route_for(model))}:{hashlib.sha256(text.encode()).hexdigest()}"


def as_float32(vector: Sequence[float]) -> list[float]:
    return array("f", vector).tolist()


def embed(texts: Sequence[str], model: str | None = None) -> list[list[float]]:
    """One vector per text, in order. Cached texts cost one Redis round trip per 500; only the
    misses (each distinct text once) reach the gateway, in batches of DSPEX_EMBEDDING_BATCH_SIZE."""
    model = model or settings.DSPEX_EMBEDDING_MODEL
    prefix = f"emb:{cache_id(embedding_route_for(model))}:"
    keys = [prefix + hashlib.sha256(text.encode()).hexdigest() for text in texts]
    distinct = list(dict.fromkeys(keys))
    found = {key: hit.value for key, hit in zip(distinct, EMBEDDINGS.get_many(distinct), strict=True) if hit}
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
    if missing:
        batch_size = max(1, settings.DSPEX_EMBEDDING_BATCH_SIZE)
        pending = list(missing.items())
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            vectors = [as_float32(v) for v in gateway.embed(model, [text for _key, text in batch])]
            computed = {key: vector for (key, _text), vector in zip(batch, vectors, strict=True)}
            EMBEDDINGS.set_many([(key, vector, None, 0) for key, vector in computed.items()])
            found.update(computed)
    return [found[key] for key in keys]
