"""Where a model's calls go: the provider, the model and the endpoint serving it.

A leaf of the LM path (`docs/architecture.md`): it reads settings and nothing else of the project,
so pricing, budgets, the LLM cache and the gateway can all ask it without importing each other.
A provider registry (many providers, deployments, fallbacks) belongs here, behind `route_for`
and `embedding_route_for`: callers only ever see a `Route`.
"""

from dataclasses import dataclass
from typing import Any

from django.conf import settings

SIM_PROVIDER = "sim"
LOCAL_PROVIDER = "local"  # sentence-transformers from disk (embeddings only)
DEFAULT_PROVIDER = "openai"  # a model name without a `provider/` prefix

# Sampling settings a spec may set (programs.spec validates them); nothing else reaches dspy.LM.
SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "n", "seed")


@dataclass(frozen=True)
class Route:
    """Where a model's calls go. `endpoint` identifies the server for cache keys and breakers
    (never a secret); `lm15_provider` is DSPy's provider name for HTTP models, None in-process."""

    provider: str
    model: str
    endpoint: str
    lm15_provider: str | None


def provider_of(model: str) -> str:
    """The provider a model name belongs to: its `provider/` prefix, else OpenAI."""
    return model.partition("/")[0] if "/" in model else DEFAULT_PROVIDER


def route_for(model: str) -> Route:
    """The route of a chat model."""
    provider = provider_of(model)
    if provider == SIM_PROVIDER:
        return Route(SIM_PROVIDER, model, "sim:in-process", None)
    base = settings.DSPEX_LM_API_BASE or "https://api.openai.com/v1"
    return Route(provider, model, base.rstrip("/"), provider)


def embedding_route_for(model: str) -> Route:
    """The route of an embedding model: `sim/` and `local/` run in-process, anything else is a
    LiteLLM model at `DSPEX_EMBEDDING_API_BASE` ("default": LiteLLM's own default endpoint)."""
    provider = provider_of(model)
    if provider == SIM_PROVIDER:
        return Route(SIM_PROVIDER, model, "sim:in-process", None)
    if provider == LOCAL_PROVIDER:
        return Route(LOCAL_PROVIDER, model, "local:in-process", None)
    # The base exactly as configured: embedding cache keys hash it.
    return Route(provider, model, settings.DSPEX_EMBEDDING_API_BASE or "default", provider)


def lm_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill an LM config from settings: model, temperature, max_tokens."""
    config = dict(config or {})
    config.setdefault("model", settings.DSPEX_LM)
    config.setdefault("max_tokens", settings.DSPEX_LM_MAX_TOKENS)
    return config
