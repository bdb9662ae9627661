"""Operator actions on caches, audited from every channel (admin, API, CLI)."""

from typing import Any

from caching.models import NamedCache
from caching.registry import CACHES
from monitoring import audit

DESCRIPTIONS = {
    "llm": "LLM responses (24 h, 10,000 entries, 1 GB)",
    "answers": "Execution answers replayed from fully cached runs (as the LLM cache's limits)",
    "embeddings": "Embeddings by model and text (7 days, 50,000 entries)",
    "optimizations": "Compiled program state by optimization result (1 h)",
}


def named(name: str) -> NamedCache:
    row, _ = NamedCache.objects.get_or_create(name=name, defaults={"description": DESCRIPTIONS.get(name, "")})
    return row


# Purging a cache purges what was derived from it: kept answers replay LLM responses.
DERIVED = {"llm": ("answers",)}


def purge(name: str, *, channel: str, user: Any = None, request: Any = None) -> int:
    """Delete every entry of one cache (and of the caches derived from it) and record who did it."""
    cache = CACHES[name]
    before = cache.stats()
    removed = cache.clear()
    for derived in DERIVED.get(name, ()):
        removed += CACHES[derived].clear()
    audit.record(
        "purge",
        named(name),
        channel=channel,
        user=user,
        request=request,
        changes={"entries": before.get("entries"), "memory_bytes": before.get("memory_bytes")},
    )
    return removed


def all_stats() -> list[dict[str, Any]]:
    """Every cache's stats; a cache whose Redis does not answer says so instead of failing."""
    rows = []
    for name, cache in CACHES.items():
        try:
            rows.append(cache.stats())
        except Exception as exc:
            rows.append({"cache": name, "backend": "unavailable", "error": type(exc).__name__})
    return rows
