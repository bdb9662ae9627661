"""What operators see about providers: every configured provider (kind, endpoint, where its key
comes from and whether one is there — never the key), its breaker, health, limits, in-flight calls
and spend, and the deployments and fallbacks configured for model names.

The registry (`llm.routing.providers`) says what is configured; Redis (`llm.resilience.status`)
says what state each endpoint is in. An endpoint that is in Redis but no longer configured (the
settings changed since it was called) is still listed, with `configured: false`, so its breaker can
still be seen and reset.

Deployments and fallbacks are shown as the settings give them: `llm.routing` validates them, this
module only reads them and must never fail on their shape.
"""

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from llm import budgets, resilience
from llm.routing import Provider, provider_of, providers, route_for

logger = logging.getLogger(__name__)


def _registry() -> tuple[dict[str, Provider], str | None]:
    """The configured providers, and the registry's error when the settings are invalid (the
    listing then shows what Redis knows instead of failing)."""
    try:
        return providers(), None
    except ImproperlyConfigured as exc:
        logger.warning("provider registry invalid: %s", exc)
        return {}, str(exc)


def display_endpoint(endpoint: str) -> str:
    """An endpoint as operators may see it: a URL's userinfo (`user:password@`) is masked."""
    if "://" not in endpoint:
        return endpoint
    parts = urlsplit(endpoint)
    if "@" not in parts.netloc:
        return endpoint
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def key_state(provider: Provider) -> tuple[bool, str | None]:
    """Whether the provider's key is there now (read from its source, never returned), and why
    not when its source cannot be read."""
    try:
        return provider.api_key() is not None, None
    except ImproperlyConfigured as exc:
        return False, str(exc)


def health(info: Mapping[str, Any]) -> str:
    """One word from the breaker: `ok`, `degraded` (failing, still closed), `recovering`
    (half-open: one trial call), `down` (open) or `unknown` (Redis unavailable)."""
    state = info.get("state")
    if state == "open":
        return "down"
    if state == "half_open":
        return "recovering"
    if state == "closed":
        return "degraded" if info.get("consecutive_failures") else "ok"
    return "unknown"


def _limits(policy: resilience.Policy) -> dict[str, Any]:
    return dataclasses.asdict(policy)


def deployments() -> dict[str, dict[str, Any]]:
    """`DSPEX_MODEL_DEPLOYMENTS` per model alias: strategy and deployments (model, provider,
    weight), entries that are not even shaped like one skipped (llm.routing reports them)."""
    shown: dict[str, dict[str, Any]] = {}
    raw = settings.DSPEX_MODEL_DEPLOYMENTS
    for alias, entry in raw.items() if isinstance(raw, Mapping) else ():
        if not isinstance(entry, Mapping):
            continue
        listed = entry.get("deployments")
        rows = []
        for deployment in listed if isinstance(listed, list) else ():
            model = deployment.get("model") if isinstance(deployment, Mapping) else None
            if not isinstance(model, str):
                continue
            weight = deployment.get("weight", 1)
            number = isinstance(weight, int | float) and not isinstance(weight, bool)
            rows.append(
                {"model": model, "provider": provider_of(model), "weight": weight if number else None}
            )
        strategy = entry.get("strategy", "weighted")
        shown[str(alias)] = {"strategy": str(strategy), "deployments": rows}
    return shown


def fallbacks() -> dict[str, list[str]]:
    """`DSPEX_MODEL_FALLBACKS`: the ordered fallback models per model, and the `default` list."""
    raw = settings.DSPEX_MODEL_FALLBACKS
    return {
        str(model): [item for item in chain if isinstance(item, str)]
        for model, chain in (raw.items() if isinstance(raw, Mapping) else ())
        if isinstance(chain, list)
    }


def routing_overview() -> dict[str, Any]:
    """The model names routing knows beyond `<provider>/<model>`: deployments and fallbacks."""
    _, problem = _registry()
    return {
        "default_model": settings.DSPEX_LM,
        "deployments": deployments(),
        "fallbacks": fallbacks(),
        "problems": [problem] if problem else [],
    }


def _default_endpoint() -> str | None:
    """The endpoint name of the default model's route (always listed, as it always was)."""
    try:
        route = route_for(settings.DSPEX_LM)
    except Exception as exc:  # an invalid default model is the routing layer's to report
        logger.warning("default model %r has no route: %s", settings.DSPEX_LM, type(exc).__name__)
        return None
    return resilience.endpoint_name(route.provider, route.endpoint)


def overview() -> list[dict]:
    """One entry per provider endpoint: every configured provider, the default model's, and every
    one with breaker state in Redis (called so far)."""
    registry, _ = _registry()
    configured = {resilience.endpoint_name(p.name, p.endpoint): p for p in registry.values()}
    names = set(resilience.known_endpoints()) | set(configured)
    default = _default_endpoint()
    if default:
        names.add(default)
    limits = budgets.limits()
    aliases = deployments()
    entries = []
    for name in sorted(names):
        info = resilience.status(name)
        provider_name = info["provider"]
        provider = configured.get(name) or registry.get(provider_name)
        policy = resilience.policy_for(provider_name)
        info["limits"] = _limits(policy)
        info["health"] = health(info)
        info["configured"] = name in configured
        has_key, key_error = key_state(provider) if provider else (False, None)
        info.update(
            kind=provider.kind if provider else None,
            # An endpoint no longer configured is known only by its (secret-free) name.
            endpoint=(
                display_endpoint(configured[name].endpoint) if name in configured else name.partition("@")[2]
            ),
            key_source=provider.key_source if provider else "none",
            has_key=has_key,
            key_error=key_error,
            timeout_s=provider.timeout_s if provider and provider.timeout_s else policy.call_timeout_s,
            deployments=[
                {
                    "alias": alias,
                    "strategy": entry["strategy"],
                    "model": row["model"],
                    "weight": row["weight"],
                }
                for alias, entry in aliases.items()
                for row in entry["deployments"]
                if row["provider"] == provider_name
            ],
        )
        provider_limits = [
            limit for limit in limits if limit.scope == "provider" and limit.target == provider_name
        ]
        # None for every limit when Redis is unavailable.
        amounts: Sequence[float | None] = budgets.spent(provider_limits) or [None] * len(provider_limits)
        info["budgets"] = [
            {"period": limit.period, "limit_usd": limit.usd, "spent_usd": amount}
            for limit, amount in zip(provider_limits, amounts, strict=False)
        ]
        entries.append(info)
    return entries


class ProviderCollector:
    """Scrape-time gauge: whether each configured provider's key is present now (0 means calls to
    it will be refused by the provider; in-process providers need none and are left out)."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        present = GaugeMetricFamily(
            "dspex_provider_key_present",
            "1 when the configured provider's API key is readable from its source",
            labels=["provider", "kind"],
        )
        registry, _ = _registry()
        for provider in registry.values():
            if not provider.in_process:
                present.add_metric([provider.name, provider.kind], 1.0 if key_state(provider)[0] else 0.0)
        yield present
