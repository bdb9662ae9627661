"""Console pages for the caches: live stats per cache and an audited purge action."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from caching import operations
from caching.models import NamedCache, ProgramCachePolicy
from caching.registry import CACHES
from dspex_site.console import ReadOnlyAdmin
from projects.console import ProjectScopedAdmin


@admin.register(NamedCache)
class NamedCacheAdmin(ReadOnlyAdmin):
    """One row per cache with its shared counters; purge is for holders of `purge_namedcache`."""

    list_display = [
        "name",
        "description",
        "hits",
        "misses",
        "hit_ratio",
        "errors",
        "entries",
        "memory_bytes",
        "saved_usd",
    ]
    actions = ["purge"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        for name in CACHES:  # the rows exist however the database was created
            operations.named(name)
        self._stats = {row["cache"]: row for row in operations.all_stats()}
        return super().get_queryset(request)

    def _stat(self, obj: NamedCache, field: str) -> Any:
        return getattr(self, "_stats", {}).get(obj.name, {}).get(field)

    @admin.display(description="hits")
    def hits(self, obj: NamedCache) -> Any:
        return self._stat(obj, "hits")

    @admin.display(description="misses")
    def misses(self, obj: NamedCache) -> Any:
        return self._stat(obj, "misses")

    @admin.display(description="hit ratio")
    def hit_ratio(self, obj: NamedCache) -> Any:
        return self._stat(obj, "hit_ratio")

    @admin.display(description="errors")
    def errors(self, obj: NamedCache) -> Any:
        return self._stat(obj, "errors")

    @admin.display(description="entries")
    def entries(self, obj: NamedCache) -> Any:
        return self._stat(obj, "entries")

    @admin.display(description="memory (bytes)")
    def memory_bytes(self, obj: NamedCache) -> Any:
        return self._stat(obj, "memory_bytes")

    @admin.display(description="saved (USD)")
    def saved_usd(self, obj: NamedCache) -> Any:
        return self._stat(obj, "saved_usd")

    @admin.action(description="Purge the selected caches", permissions=["purge"])
    def purge(self, request: HttpRequest, queryset: QuerySet) -> None:
        for row in queryset:
            removed = operations.purge(row.name, channel="admin", request=request)
            self.message_user(request, f"{row.name}: {removed} entries removed", messages.SUCCESS)

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("caching.purge_namedcache")


@admin.register(ProgramCachePolicy)
class ProgramCachePolicyAdmin(ProjectScopedAdmin):
    project_path = "program__project"
    list_display = ["program", "llm_cache", "updated_at"]
    list_select_related = ["program"]
