"""Where a model's calls go: the provider, the model and the endpoint serving it.

A leaf of the LM path (`docs/architecture.md`): it reads settings and nothing else of the project,
so pricing, budgets, the LLM cache and the gateway can all ask it without importing each other.
A provider registry (many providers, deployments, fallbacks) belongs here, behind `route_for`
and `embedding_route_for`: callers only ever see a `Route`.
"""

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

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


@functools.cache
def fingerprint() -> str:
    """A digest of everything that decides where a call goes (providers, deployments, fallbacks,
    the default model), never a key: what an answer cached above the LM path is keyed on, so a
    routing change makes it miss (executions.answers)."""
    described = {
        "providers": {name: [p.kind, p.api_base] for name, p in sorted(providers().items())},
        "deployments": settings.DSPEX_MODEL_DEPLOYMENTS,
        "fallbacks": settings.DSPEX_MODEL_FALLBACKS,
        "lm": [settings.DSPEX_LM, settings.DSPEX_LM_MAX_TOKENS],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def reset_registry() -> None:
    """Forget the registry and every resolved route and plan (after settings change)."""
    fingerprint.cache_clear()
    providers.cache_clear()
    _route.cache_clear()
    plan_for.cache_clear()
    _routing_settings.cache_clear()


# The settings the registry, routes and plans are built from.
ROUTING_SETTINGS = frozenset(
    {
        "DSPEX_PROVIDERS",
        "DSPEX_MODEL_DEPLOYMENTS",
        "DSPEX_MODEL_FALLBACKS",
        "DSPEX_LM_API_BASE",
        "DSPEX_LM_API_KEY",
        # Not the registry's, but part of `fingerprint()`.
        "DSPEX_LM",
        "DSPEX_LM_MAX_TOKENS",
    }
)


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    """Overridden settings (tests, `override_settings`) take effect at once, as before the
    registry was memoised; the engines built from them are the gateway's (`llm.gateway.reset`)."""
    if setting in ROUTING_SETTINGS:
        reset_registry()


class UnknownProvider(ValueError):
    """A model names a provider the registry does not know (`anthropic/...` with no `anthropic`
    in `DSPEX_PROVIDERS`). Refused rather than sent to the default server with the default key."""

    def __init__(self, model: str, provider: str):
        self.model, self.provider = model, provider
        super().__init__(
            f"model {model!r}: unknown provider {provider!r} "
            f"(registered: {', '.join(sorted(providers()))}; add it to DSPEX_PROVIDERS)"
        )


@dataclass(frozen=True)
class Route:
    """Where a model's calls go. `endpoint` identifies the server for cache keys and breakers
    (never a secret); `lm15_provider` is DSPy's provider name for pricing and model metadata
    (the provider's kind), None in-process; `lm15_model` is what the provider's engine is asked
    for (`openai-chat:<model>`: the provider receives `<model>`)."""

    provider: str
    model: str
    endpoint: str
    lm15_provider: str | None
    lm15_model: str = ""
    wire_model: str = ""


def provider_of(model: str) -> str:
    """The provider a model name belongs to: its `provider/` prefix, else the default provider."""
    return model.partition("/")[0] if "/" in model else DEFAULT_PROVIDER


@functools.lru_cache(maxsize=1024)
def _route(model: str) -> Route:
    name, _, rest = model.partition("/")
    if not rest:
        # No prefix: the default provider, the model name as given (today's single endpoint).
        name, rest = DEFAULT_PROVIDER, model
    provider = providers().get(name)
    if provider is None:
        raise UnknownProvider(model, name)
    if provider.in_process:
        return Route(provider.name, model, provider.endpoint, None, model, rest)
    return Route(provider.name, model, provider.endpoint, provider.kind, f"{provider.lm15_key}:{rest}", rest)


def route_for(model: str) -> Route:
    """The route of a chat model `<provider>/<model>` through the registry (memoised per process).

    A name without a prefix goes to the default provider; an unregistered prefix raises
    `UnknownProvider`. A deployment alias (`DSPEX_MODEL_DEPLOYMENTS`) gives the route of its first
    deployment: what pricing and budgets assume before a call picks one (`plan_for` has them all).
    """
    deployments = _routing_settings()[0].get(model)
    if deployments is not None:
        return deployments.deployments[0].route
    return _route(model)


# --- deployments and fallbacks ---------------------------------------------------------------
STRATEGIES = ("weighted", "least-busy")
FALLBACK_DEFAULT = "default"


@dataclass(frozen=True)
class Deployment:
    route: Route
    weight: float = 1.0


@dataclass(frozen=True)
class Target:
    """A model as a program or a fallback list names it: one deployment, or an alias standing for
    several (`strategy` picks one per call)."""

    model: str
    strategy: str
    deployments: tuple[Deployment, ...]


@dataclass(frozen=True)
class Plan:
    """What a call to `model` may try, in order: the model itself, then its fallbacks."""

    model: str
    targets: tuple[Target, ...]

    @property
    def simple(self) -> bool:
        """One deployment and no fallback: the gateway's fast path (no choice, no Redis read)."""
        return len(self.targets) == 1 and len(self.targets[0].deployments) == 1


def _direct(model: str, where: str) -> Route:
    try:
        return _route(model)
    except UnknownProvider as exc:
        raise ImproperlyConfigured(f"{where}: unknown provider {exc.provider!r}") from None


@functools.cache
def _routing_settings() -> tuple[dict[str, Target], dict[str, tuple[str, ...]]]:
    """`DSPEX_MODEL_DEPLOYMENTS` and `DSPEX_MODEL_FALLBACKS`, checked whole at first use; an error
    names its path (`DSPEX_MODEL_DEPLOYMENTS.fast.deployments[1].model: unknown provider 'x'`)."""
    aliases: dict[str, Target] = {}
    raw_deployments = settings.DSPEX_MODEL_DEPLOYMENTS
    for alias, raw in raw_deployments.items():
        where = f"DSPEX_MODEL_DEPLOYMENTS.{alias}"
        if not isinstance(raw, dict):
            raise ImproperlyConfigured(f"{where} must be a JSON object")
        unknown = sorted(set(raw) - {"strategy", "deployments"})
        if unknown:
            raise ImproperlyConfigured(
                f"{where}: unknown field {unknown[0]!r} (fields: deployments, strategy)"
            )
        strategy = raw.get("strategy", "weighted")
        if strategy not in STRATEGIES:
            raise ImproperlyConfigured(f"{where}.strategy: {strategy!r} is not one of {list(STRATEGIES)}")
        entries = raw.get("deployments")
        if not isinstance(entries, list) or not entries:
            raise ImproperlyConfigured(f"{where}.deployments must be a non-empty list")
        found = []
        for i, entry in enumerate(entries):
            at = f"{where}.deployments[{i}]"
            if not isinstance(entry, dict):
                raise ImproperlyConfigured(f"{at} must be a JSON object")
            extra = sorted(set(entry) - {"model", "weight"})
            if extra:
                raise ImproperlyConfigured(f"{at}: unknown field {extra[0]!r} (fields: model, weight)")
            model = entry.get("model")
            if not isinstance(model, str) or "/" not in model:
                raise ImproperlyConfigured(f"{at}.model must be a string '<provider>/<model>'")
            if model in raw_deployments:
                raise ImproperlyConfigured(f"{at}.model: {model!r} is an alias; deployments name models")
            weight = entry.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
                raise ImproperlyConfigured(f"{at}.weight must be a positive number")
            found.append(Deployment(_direct(model, f"{at}.model"), float(weight)))
        aliases[alias] = Target(alias, strategy, tuple(found))
    fallbacks: dict[str, tuple[str, ...]] = {}
    for model, chain in settings.DSPEX_MODEL_FALLBACKS.items():
        where = f"DSPEX_MODEL_FALLBACKS.{model}"
        if not isinstance(chain, list):
            raise ImproperlyConfigured(f"{where} must be a list of models")
        for i, fallback in enumerate(chain):
            if not isinstance(fallback, str) or not fallback:
                raise ImproperlyConfigured(f"{where}[{i}] must be a model name")
            if fallback not in aliases:
                _direct(fallback, f"{where}[{i}]")
        fallbacks[model] = tuple(chain)
    return aliases, fallbacks


def _target(model: str) -> Target:
    alias = _routing_settings()[0].get(model)
    if alias is not None:
        return alias
    return Target(model, "single", (Deployment(_route(model)),))


@functools.lru_cache(maxsize=1024)
def plan_for(model: str) -> Plan:
    """The deployments and fallbacks a call to `model` may use (memoised per process): the model
    (an alias or `<provider>/<model>`), then `DSPEX_MODEL_FALLBACKS[model]`, else the `default`
    list, each model once."""
    fallbacks = _routing_settings()[1]
    chain = fallbacks.get(model, fallbacks.get(FALLBACK_DEFAULT, ()))
    targets = [_target(model)]
    seen = {model}
    for fallback in chain:
        if fallback not in seen:
            seen.add(fallback)
            targets.append(_target(fallback))
    return Plan(model, tuple(targets))


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    """System check (`manage.py check`, test runs, deploy checks): the registry, deployments and
    fallbacks are valid, so a typo is reported with its path before the first LM call meets it."""
    try:
        providers()
        _routing_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="llm.E001")]
    return []


def context_window(route: Route) -> int | None:
    """The input window of a routed model from DSPy's bundled metadata (None when unknown)."""
    if route.lm15_provider is None:
        return None
    return _context_window(route.lm15_provider, route.wire_model)


@functools.lru_cache(maxsize=256)
def _context_window(kind: str, model: str) -> int | None:
    from dspy.clients.model_metadata import model_info

    info = model_info(kind, model) or {}
    window = info.get("max_input_tokens") or info.get("max_tokens")
    return int(window) if isinstance(window, int | float) else None


def embedding_route_for(model: str) -> Route:
    """The route of an embedding model: `sim/` and `local/` run in-process; `<name>/<model>` of a
    provider registered in `DSPEX_PROVIDERS` goes to that provider (its endpoint, its key: see
    `embedding_key`) as a LiteLLM model of its kind; anything else is a LiteLLM model at
    `DSPEX_EMBEDDING_API_BASE` ("default": LiteLLM's own default endpoint)."""
    provider = provider_of(model)
    if provider == SIM_PROVIDER:
        return Route(SIM_PROVIDER, model, "sim:in-process", None)
    if provider == LOCAL_PROVIDER:
        return Route(LOCAL_PROVIDER, model, "local:in-process", None)
    if provider in settings.DSPEX_PROVIDERS:
        entry = providers()[provider]
        wire = f"{entry.kind}/{model.partition('/')[2]}"  # LiteLLM's name for it: kind/model
        return Route(provider, model, entry.endpoint, entry.kind, wire_model=wire)
    # The base exactly as configured: embedding cache keys hash it.
    return Route(provider, model, settings.DSPEX_EMBEDDING_API_BASE or "default", provider)


def embedding_key(route: Route) -> str | None:
    """The key an embedding route sends: its registered provider's own, else the embedding
    setting's (`DSPEX_EMBEDDING_API_KEY`, by default the single-endpoint key)."""
    if route.provider in settings.DSPEX_PROVIDERS:
        return providers()[route.provider].api_key()
    return settings.DSPEX_EMBEDDING_API_KEY


def lm_config(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fill an LM config from settings: model, temperature, max_tokens."""
    config = dict(config or {})
    config.setdefault("model", settings.DSPEX_LM)
    config.setdefault("max_tokens", settings.DSPEX_LM_MAX_TOKENS)
    return config
