"""`manage.py dspex_cache stats` and `manage.py dspex_cache clear <cache>` (llm, embeddings,
optimizations, or all)."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from caching import operations
from caching.registry import CACHES


class Command(BaseCommand):
    help = "Show cache statistics, or clear a cache."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("action", choices=["stats", "clear"])
        parser.add_argument("cache", nargs="?", help=f"one of {', '.join(CACHES)}, or all")

    def handle(self, *args: Any, action: str, cache: str | None, **options: Any) -> None:
        if action == "stats":
            names = [cache] if cache and cache != "all" else list(CACHES)
            self._check(names)
            self.stdout.write(json.dumps([CACHES[name].stats() for name in names], indent=2))
            return
        if not cache:
            raise CommandError("clear needs a cache name (or all)")
        names = list(CACHES) if cache == "all" else [cache]
        self._check(names)
        for name in names:
            removed = operations.purge(name, channel="cli")
            self.stdout.write(f"{name}: {removed} entries removed")

    @staticmethod
    def _check(names: list[str]) -> None:
        unknown = [name for name in names if name not in CACHES]
        if unknown:
            raise CommandError(f"unknown cache {unknown[0]!r}; choose from {', '.join(CACHES)}")
