"""Pieces the operator console's apps share."""

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from dspex_site.errors import DomainError


def show_domain_error(request: HttpRequest, exc: DomainError) -> None:
    """The console's answer to a domain error (a spent budget, an archived program, ...): an
    error message on the page, never a 500."""
    messages.error(request, exc.summary())


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records the service writes (executions, batches, versions, audit events, caches):
    operators with view permission look at them; nobody adds, edits or deletes them here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
