"""Where a model's calls go: the provider, the model and the endpoint serving it.

A leaf of the LM path (`docs/architecture.md`): it reads settings and nothing else of the project,
so pricing, budgets, the LLM cache and the gateway can all ask it without importing each other.
A provider registry (many providers, deployments, fallbacks) belongs here, behind `route_for`
and `embedding_route_for`: callers only ever see a `Route`.
"""

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SIM_PROVIDER = "sim"
LOCAL_PROVIDER = "local"  # sentence-transformers from disk (embeddings only)
DEFAULT_PROVIDER = "openai"  # a model name without a `provider/` prefix

# Sampling settings a spec may set (programs.spec validates them); nothing else reaches dspy.LM.
SAMPLING_KEYS = ("temperature", "max_tokens", "top_p", "n", "seed")


# Provider kinds DSPy's own HTTP client (lm15) speaks natively, and the lm15 provider key each
# uses: an OpenAI-compatible server is "openai-chat" (a base URL registered under "openai" is
# ignored and calls go to api.openai.com: docs/dspy.md).
LM15_KINDS = {"openai": "openai-chat", "anthropic": "anthropic", "gemini": "gemini", "xai": "xai"}
IN_PROCESS_KINDS = {SIM_PROVIDER: "sim:in-process"}
PROVIDER_FIELDS = {"kind", "api_base", "api_key_env", "api_key_file", "timeout_s", "limits"}


@dataclass(frozen=True)
class Provider:
    """One configured provider: where its server is and where its key comes from — never the key.

    `api_key()` reads the key from its source when an engine is built, so a rotated key file or
    variable is picked up by `llm.gateway.reset()` without the key ever sitting in a setting,
    a cache key, a trace or a log.
    """

    name: str
    kind: str
    api_base: str | None = None
    timeout_s: float | None = None
    api_key_env: str | None = None
    api_key_file: str | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    # The built-in default provider reads its key from the single-endpoint setting (which itself
    # comes from DSPEX_LM_API_KEY, DSPEX_LM_API_KEY_FILE or OPENAI_API_KEY).
    api_key_setting: str | None = None

    @property
    def in_process(self) -> bool:
        return self.kind in IN_PROCESS_KINDS

    @property
    def lm15_key(self) -> str | None:
        """The key DSPy's lm15 router files this provider's credentials and base URL under."""
        return LM15_KINDS.get(self.kind)

    @property
    def endpoint(self) -> str:
        """The server's identity for cache keys and breakers (never a secret)."""
        if self.in_process:
            return IN_PROCESS_KINDS[self.kind]
        return (self.api_base or "").rstrip("/") or f"{self.kind}:default"

    @property
    def key_source(self) -> str:
        """Where the key comes from, for operators: `env:NAME`, `file:/path` or `none`."""
        if self.api_key_env:
            return f"env:{self.api_key_env}"
        if self.api_key_file:
            return f"file:{self.api_key_file}"
        if self.api_key_setting:
            return f"setting:{self.api_key_setting}"
        return "none"

    def api_key(self) -> str | None:
        """The key, read from its source now; None when the provider needs none."""
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text().strip() or None
            except OSError as exc:
                raise ImproperlyConfigured(
                    f"DSPEX_PROVIDERS.{self.name}.api_key_file: {self.api_key_file!r} cannot be read: {exc}"
                ) from exc
        if self.api_key_setting:
            return getattr(settings, self.api_key_setting, None) or None
        return None


def _provider(name: str, raw: Any) -> Provider:
    """One `DSPEX_PROVIDERS` entry, checked; errors name the entry and the field."""
    where = f"DSPEX_PROVIDERS.{name}"
    if not isinstance(raw, dict):
        raise ImproperlyConfigured(f"{where} must be a JSON object")
    if "api_key" in raw:
        raise ImproperlyConfigured(
            f"{where}.api_key: keys never go in settings; use api_key_env or api_key_file"
        )
    unknown = sorted(set(raw) - PROVIDER_FIELDS)
    if unknown:
        raise ImproperlyConfigured(
            f"{where}: unknown field {unknown[0]!r} (fields: {sorted(PROVIDER_FIELDS)})"
        )
    kind = raw.get("kind", "openai")
    if kind not in LM15_KINDS and kind not in IN_PROCESS_KINDS:
        raise ImproperlyConfigured(
            f"{where}.kind: {kind!r} is not one of {sorted({*LM15_KINDS, *IN_PROCESS_KINDS})}"
        )
    if raw.get("api_key_env") and raw.get("api_key_file"):
        raise ImproperlyConfigured(f"{where}: give api_key_env or api_key_file, not both")
    for key in ("api_base", "api_key_env", "api_key_file"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ImproperlyConfigured(f"{where}.{key} must be a string")
    timeout = raw.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ImproperlyConfigured(f"{where}.timeout_s must be a positive number of seconds")
    limits = raw.get("limits", {})
    if not isinstance(limits, dict):
        raise ImproperlyConfigured(f"{where}.limits must be a JSON object")
    return Provider(
        name=name,
        kind=kind,
        api_base=raw.get("api_base"),
        timeout_s=float(timeout) if timeout is not None else None,
        api_key_env=raw.get("api_key_env"),
        api_key_file=raw.get("api_key_file"),
        limits=dict(limits),
    )


@functools.cache
def providers() -> dict[str, Provider]:
    """The provider registry: `DSPEX_PROVIDERS`, plus the built-in ones it does not redefine —
    `sim` (in-process) and the default provider `openai` from the single-endpoint settings
    (`DSPEX_LM_API_BASE`, `DSPEX_LM_API_KEY`). Memoised; `reset_registry()` after settings change."""
    registry = {
        SIM_PROVIDER: Provider(SIM_PROVIDER, SIM_PROVIDER),
        # The single-endpoint settings keep working as the default provider.
        DEFAULT_PROVIDER: Provider(
            DEFAULT_PROVIDER,
            "openai",
            api_base=settings.DSPEX_LM_API_BASE or "https://api.openai.com/v1",
            api_key_setting="DSPEX_LM_API_KEY",
        ),
    }
    for name, raw in settings.DSPEX_PROVIDERS.items():
        if not name or "/" in name:
            raise ImproperlyConfigured(
                f"DSPEX_PROVIDERS: provider name {name!r} must be non-empty, without '/'"
            )
        registry[name] = _provider(name, raw)
    return registry


def reset_registry() -> None:
    providers.cache_clear()


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
