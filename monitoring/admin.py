"""Console pages for the audit trail and for API keys (issued and revoked by superusers, audited)."""

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from dspex_site.console import ReadOnlyAdmin
from monitoring import audit
from monitoring.models import AuditEvent
from projects import access, keys
from projects.models import ApiKey

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
    "key_prefix",
    "ip",
    "changes_json",
)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """Read-only for everyone, superusers included: the trail is append-only."""

    list_display = ["created_at", "who", "action", "target", "origin", "change"]
    list_filter = ["channel", "action", "object_type", "created_at"]
    search_fields = ["object_id", "object_repr", "actor_name", "key_prefix"]
    search_help_text = "Object id, object name, username or API key prefix"
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
        name = obj.actor_name or "—"
        if obj.key_prefix:
            return format_html('{} <span class="dspex-muted">key {}…</span>', name, obj.key_prefix)
        return name

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


class IssueKeyForm(forms.ModelForm):
    """Issuing a key in the console: who it acts for (or a project's service key), where, what."""

    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices,
        initial=list(keys.SCOPES),
        widget=forms.CheckboxSelectMultiple,
    )

    class Meta:
        model = ApiKey
        fields = ["name", "user", "service", "project", "scopes", "expires_at"]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("service") and not data.get("project"):
            self.add_error("project", "A service key belongs to a project.")
        if not data.get("service") and not data.get("user"):
            self.add_error("user", "A key acts for a user, or is a project's service key.")
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """API keys: only superusers see, issue or revoke them here (project admins manage their
    projects' keys through the API), and every issue and revoke is audited.

    The key is shown in full once, right after it is issued; lists show only its prefix. Keys
    are revoked (the action), never edited or deleted."""

    form = IssueKeyForm
    list_display = ["prefix", "name", "user", "project", "scope_list", "expires_at", "last_used_at", "state"]
    list_filter = ["project", "service", ("revoked_at", admin.EmptyFieldListFilter)]
    list_select_related = ["user", "project"]
    search_fields = ["prefix", "name", "user__username"]
    actions = ["revoke_keys"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a key is issued or revoked, never edited

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked instead: executions and audit events point at it

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.display(description="state")
    def state(self, obj: ApiKey) -> str:
        refused = keys.refusal(obj.revoked_at, obj.expires_at, obj.prefix)
        return "active" if refused is None else refused.code.removeprefix("key_")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        data = form.cleaned_data
        with transaction.atomic():
            issued = keys.issue(
                name=data["name"],
                user=data.get("user"),
                project=data.get("project"),
                scopes=data["scopes"],
                expires_at=data.get("expires_at"),
                service=bool(data.get("service")),
                created_by=request.user,
            )
            audit.record(
                "issue_key",
                issued.api_key,
                channel="admin",
                request=request,
                changes=keys.facts(issued.api_key),
            )
        self._issued = issued

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue: Any = None) -> Any:
        # Not the default "added" message: the key is shown here once, and said to be.
        issued = self._issued
        messages.warning(request, f"API key {issued.api_key.name} (shown once, copy it now): {issued.key}")
        return HttpResponseRedirect(reverse("admin:projects_apikey_changelist"))

    @admin.action(description="Revoke the selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet) -> None:
        revoked = 0
        with transaction.atomic():
            for api_key in queryset.select_for_update(of=("self",)):
                if keys.revoke(api_key):
                    revoked += 1
                    audit.record(
                        "revoke_key", api_key, channel="admin", request=request, changes=keys.facts(api_key)
                    )
        messages.success(request, f"Revoked {revoked} key(s); every process refuses them within a second.")

    # Django's own admin log would hold the form's data; the audit trail records these instead.
    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> None:  # type: ignore[override]
        return None
