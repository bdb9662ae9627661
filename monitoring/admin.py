"""Console pages for the audit trail and for API tokens (issued and revoked by superusers, audited)."""

import json
from typing import Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from rest_framework.authtoken.admin import TokenAdmin as DRFTokenAdmin
from rest_framework.authtoken.models import TokenProxy

from dspex_site.console import ReadOnlyAdmin
from monitoring import audit
from monitoring.models import AuditEvent
from projects import access

# Shown, and read-only, on an audit event's page (a tuple: both attributes' stub types accept it).
_FIELDS = (
    "created_at",
    "actor_name",
    "actor",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "channel",
    "ip",
    "changes_json",
)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only for everyone, superusers included: the trail is append-only."""

    list_display = ["created_at", "who", "action", "target", "origin", "change"]
    list_filter = ["channel", "action", "object_type", "created_at"]
    search_fields = ["object_id", "object_repr", "actor_name"]
    search_help_text = "Object id, object name or username"
    list_per_page = 100
    show_full_result_count = False
    fields = _FIELDS
    readonly_fields = _FIELDS

    def get_actions(self, request: HttpRequest) -> dict:
        return {}

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Superusers see the whole trail; everyone else the events of the projects they are an
        admin of (README, "Projects"): a project's trail is its admins'."""
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(project_id__in=access.administered(request.user))

    @admin.display(description="who", ordering="actor_name")
    def who(self, obj: AuditEvent) -> str:
        return obj.actor_name or "—"

    @admin.display(description="object", ordering="object_type")
    def target(self, obj: AuditEvent) -> str:
        kind = obj.object_type.rpartition(".")[2]
        return format_html('{} <span class="dspex-muted">{}</span>', obj.object_repr or obj.object_id, kind)

    @admin.display(description="from", ordering="channel")
    def origin(self, obj: AuditEvent) -> str:
        return format_html('{} <span class="dspex-muted">{}</span>', obj.channel, obj.ip or "")

    @admin.display(description="change")
    def change(self, obj: AuditEvent) -> str:
        """The changed fields' names, or the first few keys of what was recorded."""
        keys = list(obj.changes) if isinstance(obj.changes, dict) else []
        shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6})" if len(keys) > 6 else "")
        return shown or "—"

    @admin.display(description="changes")
    def changes_json(self, obj: AuditEvent) -> str:
        text = json.dumps(obj.changes, indent=2, ensure_ascii=False, default=str)
        return format_html('<pre class="dspex-json">{}</pre>', text)


if admin.site.is_registered(TokenProxy):
    admin.site.unregister(TokenProxy)


@admin.register(TokenProxy)
class TokenAdmin(DRFTokenAdmin):
    """API tokens: only superusers see, issue or revoke them, and every issue and revoke is audited.

    The key is shown in full once, right after it is issued; lists show only its first characters.
    """

    list_display = ["key_prefix", "user", "created", "revoke_link"]
    list_select_related = ["user"]
    list_display_links = None  # nothing to see on a token's own page but its key

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        return HttpResponseRedirect(reverse("admin:authtoken_tokenproxy_changelist"))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a token is issued or revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    @admin.display(description="")
    def revoke_link(self, obj: TokenProxy) -> str:
        url = reverse("admin:authtoken_tokenproxy_delete", args=[obj.user_id])
        return format_html('<a class="deletelink" href="{}">Revoke</a>', url)

    @admin.display(description="key")
    def key_prefix(self, obj: TokenProxy) -> str:
        return f"{obj.key[:6]}…"

    def save_model(self, request: HttpRequest, obj: TokenProxy, form: Any, change: bool) -> None:
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            audit.record(
                "issue_token", obj.user, channel="admin", request=request, changes={"user": obj.user.username}
            )

    def response_add(self, request: HttpRequest, obj: TokenProxy, post_url_continue: Any = None) -> Any:
        # Not the default "added" message: it would show the key without saying it is shown once.
        messages.warning(request, f"API token for {obj.user.username} (shown once, copy it now): {obj.key}")
        return HttpResponseRedirect(reverse("admin:authtoken_tokenproxy_changelist"))

    # Django's own admin log stores str(token), which is the key: the audit trail records these instead.
    # The stubs promise the LogEntry written; no caller in Django uses it, and these write none.
    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:  # type: ignore[override]
        return None

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> None:  # type: ignore[override]
        return None

    def log_deletions(self, request: HttpRequest, queryset: Any) -> None:  # type: ignore[override]
        return None

    def delete_model(self, request: HttpRequest, obj: TokenProxy) -> None:
        with transaction.atomic():
            audit.record(
                "revoke_token",
                obj.user,
                channel="admin",
                request=request,
                changes={"user": obj.user.username},
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            for token in queryset.select_related("user"):
                audit.record(
                    "revoke_token",
                    token.user,
                    channel="admin",
                    request=request,
                    changes={"user": token.user.username},
                )
            super().delete_queryset(request, queryset)
