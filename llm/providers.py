"""What operators see about providers: breaker state, limits, in-flight calls and spend."""

from collections.abc import Sequence

from django.conf import settings

from llm import budgets, resilience
from llm.routing import route_for


def overview() -> list[dict]:
    """One entry per provider endpoint: the configured default and every one called so far."""
    default = route_for(settings.DSPEX_LM)
    names = set(resilience.known_endpoints())
    names.add(resilience.endpoint_name(default.provider, default.endpoint))
    limits = budgets.limits()
    entries = []
    for name in sorted(names):
        info = resilience.status(name)
        provider_limits = [
            limit for limit in limits if limit.scope == "provider" and limit.target == info["provider"]
        ]
        # None for every limit when Redis is unavailable.
        amounts: Sequence[float | None] = budgets.spent(provider_limits) or [None] * len(provider_limits)
        info["budgets"] = [
            {"period": limit.period, "limit_usd": limit.usd, "spent_usd": amount}
            for limit, amount in zip(provider_limits, amounts, strict=False)
        ]
        entries.append(info)
    return entries
