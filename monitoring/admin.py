from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: the trail is append-only."""

    list_display = ["created_at", "actor_name", "action", "object_type", "object_repr", "channel", "ip"]
    list_filter = ["action", "channel", "object_type"]
    search_fields = ["object_id", "object_repr", "actor_name"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
