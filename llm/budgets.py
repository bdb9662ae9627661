"""Spend limits per provider, program, project and API key, daily and monthly (UTC), counted in
Redis.

Every provider call adds its cost to Redis counters (`llm.resilience.Ticket.finish`, in the same
script that releases the call's admission). `check()` compares them with the limits from
`DSPEX_BUDGETS` and the admin's `Budget` rows: new executions are refused with `budget_exceeded`
once a limit is reached (`executions.runner.create_execution`), and so are provider calls of runs
already going (the gateway), so a long batch cannot overrun a budget by much.

Limits are re-read at most every `REFRESH_S` per process; Redis trouble fails open (counted).
"""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from dspex_site.errors import DomainError
from llm import resilience
from llm.routing import UnknownProvider, lm_config, route_for

REFRESH_S = 10.0
PERIODS = ("daily", "monthly")


@dataclass(frozen=True)
class Limit:
    scope: str  # provider | program | project | key
    target: str  # provider name, or program, project or key id
    label: str  # provider, program or project name, or `project/key name` (bounded metric label)
    period: str  # daily | monthly
    usd: float


@dataclass(frozen=True)
class Rate:
    """A project's or key's per-minute limits (enforced by llm.quotas)."""

    scope: str  # project | key
    target: str  # its id
    label: str  # project name, or `project/key name` (bounded metric label; never an id or a key)
    requests_per_minute: int | None
    tokens_per_minute: int | None


class BudgetExceeded(DomainError):
    """A spend limit is reached: refuse new work (the API answers 402 `budget_exceeded`)."""

    code = "budget_exceeded"

    def __init__(self, limit: Limit, spent: float):
        self.limit, self.spent = limit, spent
        super().__init__(
            f"The {limit.period} budget of {limit.scope} '{limit.label}' (${limit.usd:.2f}) is used up "
            f"(${spent:.4f} spent); new executions are refused until the period ends or an operator "
            "raises the limit.",
        )


_cache: dict[str, Any] = {"at": -1e9, "limits": [], "rates": []}
_lock = threading.Lock()


def _load() -> tuple[list[Limit], list[Rate]]:
    """Spend limits, and the per-minute rate limits of projects and keys (llm.quotas), from
    `DSPEX_BUDGETS` and the enabled `Budget` rows."""
    from llm.models import Budget  # so importing budgets never needs a ready app registry

    found: dict[tuple[str, str, str], Limit] = {}
    rates: dict[tuple[str, str], Rate] = {}

    def add_rate(scope: str, target: str, label: str, rpm: Any, tpm: Any) -> None:
        """Add a rate limit; when two sources name the same target, the lower of each wins."""
        if not rpm and not tpm:
            return
        known = rates.get((scope, target))

        def lower(given: Any, kept: int | None) -> int | None:
            values = [int(value) for value in (given, kept) if value]
            return min(values) if values else None

        rates[(scope, target)] = Rate(
            scope,
            target,
            label,
            lower(rpm, known.requests_per_minute if known else None),
            lower(tpm, known.tokens_per_minute if known else None),
        )

    def add(scope: str, target: str, label: str, period: str, usd: Any) -> None:
        if usd is None:
            return
        key = (scope, target, period)
        if key not in found or float(usd) < found[key].usd:
            found[key] = Limit(scope, target, label, period, float(usd))

    config = settings.DSPEX_BUDGETS
    for scope, section in (("provider", "providers"), ("program", "programs")):
        for target, limits in (config.get(section) or {}).items():
            for period in PERIODS:
                add(scope, str(target), str(target), period, limits.get(period))
    by_name = config.get("projects") or {}
    if by_name:  # named in settings; counted by id
        from projects.models import Project

        for project_id, name in Project.objects.filter(name__in=list(by_name)).values_list("id", "name"):
            for period in PERIODS:
                add("project", str(project_id), name, period, by_name[name].get(period))
            add_rate(
                "project",
                str(project_id),
                name,
                by_name[name].get("requests_per_minute"),
                by_name[name].get("tokens_per_minute"),
            )
    rows = Budget.objects.filter(enabled=True).select_related("program", "project", "api_key__project")
    for row in rows:
        if row.scope == Budget.Scope.PROVIDER:
            target, label = row.provider, row.provider
        elif row.scope == Budget.Scope.PROJECT:
            target, label = str(row.project_id), row.target_label
        elif row.scope == Budget.Scope.KEY:
            target, label = str(row.api_key_id), row.target_label
        else:
            target, label = str(row.program_id), row.program.name if row.program else str(row.program_id)
        add(row.scope, target, label, "daily", row.daily_limit_usd)
        add(row.scope, target, label, "monthly", row.monthly_limit_usd)
        if row.scope in (Budget.Scope.PROJECT, Budget.Scope.KEY):
            add_rate(row.scope, target, label, row.requests_per_minute, row.tokens_per_minute)
    return list(found.values()), list(rates.values())


def limits_and_rates(refresh: bool = False) -> tuple[list[Limit], list[Rate]]:
    with _lock:
        if refresh or time.monotonic() - _cache["at"] > REFRESH_S:
            (_cache["limits"], _cache["rates"]), _cache["at"] = _load(), time.monotonic()
        return _cache["limits"], _cache["rates"]


def limits(refresh: bool = False) -> list[Limit]:
    return limits_and_rates(refresh)[0]


def invalidate() -> None:
    """Forget this process's copy of the limits (after an admin edit, in tests)."""
    with _lock:
        _cache["at"] = -1e9


def _key(limit: Limit) -> str:
    return resilience.spend_key(limit.scope, limit.target, limit.period)


def spent(selected: list[Limit]) -> list[float] | None:
    """USD spent in each limit's current period, or None when Redis is unavailable."""
    client = resilience._redis.client()
    if client is None or not selected:
        return None if client is None else []
    try:
        values = client.mget([_key(limit) for limit in selected])
    except Exception as exc:
        resilience._redis.failed("budget", exc)
        return None
    return [float(v) if v is not None else 0.0 for v in values]


def check(
    *, providers: tuple[str, ...] = (), program_id: Any = None, project_id: Any = None, key_id: Any = None
) -> None:
    """Raise BudgetExceeded if any limit of these providers, or of this program, project or API
    key, is reached."""
    targets = {
        "program": str(program_id) if program_id is not None else None,
        "project": str(project_id) if project_id is not None else None,
        "key": str(key_id) if key_id is not None else None,
    }
    selected = [
        limit
        for limit in limits()
        if (
            limit.target in providers
            if limit.scope == "provider"
            else limit.target == targets.get(limit.scope)
        )
    ]
    if not selected:
        return
    amounts = spent(selected)
    for limit, amount in zip(selected, amounts or [], strict=False):
        if amount >= limit.usd:
            raise BudgetExceeded(limit, amount)


def program_providers(program: Any) -> tuple[str, ...]:
    """Providers a program's runs will call, as far as the spec says without running it."""
    model = (program.pipeline or {}).get("lm", {}) if isinstance(program.pipeline, dict) else {}
    model = model.get("model") if isinstance(model, dict) else None
    if not isinstance(model, str) or model.startswith("$"):
        model = lm_config()["model"]
    try:
        return (route_for(model).provider,)
    except (UnknownProvider, ImproperlyConfigured):
        return ()  # the run's first LM call fails with the error, naming the model or setting


class BudgetCollector:
    """Scrape-time gauges: spend, limit and whether it is reached, per budget and period."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["scope", "target", "period"]
        spend = GaugeMetricFamily("dspex_budget_spend_usd", "Spend in the current period", labels=labels)
        limit_g = GaugeMetricFamily("dspex_budget_limit_usd", "Spend limit of the period", labels=labels)
        exceeded = GaugeMetricFamily(
            "dspex_budget_exceeded", "1 when the budget is used up (new work is refused)", labels=labels
        )
        try:
            selected = limits()
        except Exception:
            selected = []
        amounts = spent(selected) if selected else []
        for limit, amount in zip(selected, amounts or [], strict=False):
            key = [limit.scope, limit.label, limit.period]
            spend.add_metric(key, amount)
            limit_g.add_metric(key, limit.usd)
            exceeded.add_metric(key, 1.0 if amount >= limit.usd else 0.0)
        yield spend
        yield limit_g
        yield exceeded
