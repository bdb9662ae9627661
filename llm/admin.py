"""Console pages for providers: every configured provider (kind, endpoint, key source — never the
key), its breaker with a reset action, limits and spend; model deployments and fallbacks; budgets."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.views.decorators.http import require_http_methods

from dspex_site.roles import EDIT, is_operator
from llm import budgets, resilience
from llm import providers as provider_info
from llm.models import Budget
from monitoring import audit
from projects import access


@require_http_methods(["GET", "POST"])
def providers_page(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _reset(request)
    context = {
        **admin.site.each_context(request),
        "title": "Providers",
        "providers": provider_info.overview(),
        "routing": provider_info.routing_overview(),
        "can_operate": is_operator(request.user),
    }
    return TemplateResponse(request, "llm/providers.html", context)


def _reset(request: HttpRequest) -> HttpResponse:
    if not is_operator(request.user):
        raise PermissionDenied("Only operators may reset a circuit breaker.")
    name = request.POST.get("name", "")
    if name not in resilience.known_endpoints():
        messages.error(request, f"Unknown provider endpoint {name!r}.")
        return HttpResponseRedirect(reverse("llm-providers"))
    before = resilience.status(name)
    try:
        resilience.reset(name)
    except Exception as exc:
        messages.error(request, f"Could not reset {name}: {type(exc).__name__}")
        return HttpResponseRedirect(reverse("llm-providers"))
    audit.record(
        "reset_circuit_breaker",
        _BreakerRef(name),
        channel="admin",
        request=request,
        changes={"state": {"from": before.get("state"), "to": "closed"}},
    )
    messages.success(request, f"Circuit breaker for {name} reset to closed.")
    return HttpResponseRedirect(reverse("llm-providers"))


class _BreakerRef:
    """A breaker lives in Redis, not the database: this gives the audit trail its label and id."""

    class _meta:  # mimics a model's _meta for monitoring.audit.record
        label = "llm.CircuitBreaker"

    def __init__(self, name: str):
        self.pk = name

    def __str__(self) -> str:
        return f"circuit breaker {self.pk}"


def urls() -> list:
    return [path("", admin.site.admin_view(providers_page), name="llm-providers")]


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = (
        "scope",
        "target_label",
        "daily_limit_usd",
        "monthly_limit_usd",
        "requests_per_minute",
        "tokens_per_minute",
        "in_use",
        "enabled",
        "updated_at",
    )
    list_filter = ("scope", "enabled")
    autocomplete_fields = ()
    raw_id_fields = ("program",)
    fields = (
        "scope",
        "provider",
        "program",
        "project",
        "api_key",
        "daily_limit_usd",
        "monthly_limit_usd",
        "enabled",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Provider budgets are site-wide (every operator sees them, as before); a program's,
        project's or key's budget belongs to that project."""
        queryset = super().get_queryset(request).select_related("program", "project", "api_key__project")
        ids = access.visible_ids(request.user)
        if ids is None:
            return queryset
        return queryset.filter(
            Q(scope=Budget.Scope.PROVIDER)
            | Q(program__project_id__in=ids)
            | Q(project_id__in=ids)
            | Q(api_key__project_id__in=ids)
        )

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        manager = db_field.related_model._default_manager
        if db_field.name == "program":
            kwargs["queryset"] = access.visible(manager.all(), request.user, "project")
        elif db_field.name == "project":
            ids = access.visible_ids(request.user)
            kwargs["queryset"] = manager.all() if ids is None else manager.filter(id__in=ids)
        elif db_field.name == "api_key":
            ids = access.visible_ids(request.user)
            live = manager.filter(revoked_at__isnull=True, project__isnull=False).select_related("project")
            kwargs["queryset"] = live if ids is None else live.filter(project_id__in=ids)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="spent / used now")
    def in_use(self, obj: Budget) -> str:
        """Spend today and this month, and (projects, keys) calls and tokens of the sliding
        minute, from the same Redis counters that enforce them ("—" without Redis)."""
        return budget_usage(obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """A project's budgets are changed by those who may edit in that project (site budgets:
        as the model permission says)."""
        if not super().has_change_permission(request, obj):
            return False
        project_id = _budget_project(obj) if obj is not None else None
        return project_id is None or access.allows(request.user, project_id, EDIT)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if not super().has_delete_permission(request, obj):
            return False
        project_id = _budget_project(obj) if obj is not None else None
        return project_id is None or access.allows(request.user, project_id, EDIT)

    def save_model(self, request: HttpRequest, obj: Budget, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        budgets.invalidate()
        audit.record(
            "change" if change else "add",
            obj,
            channel="admin",
            request=request,
            changes={field: str(form.cleaned_data.get(field)) for field in getattr(form, "changed_data", [])},
        )


def _budget_project(budget: Budget) -> int | None:
    if budget.scope == Budget.Scope.PROJECT:
        return budget.project_id
    if budget.scope == Budget.Scope.KEY and budget.api_key is not None:
        return budget.api_key.project_id
    if budget.scope == Budget.Scope.PROGRAM and budget.program is not None:
        return budget.program.project_id
    return None


def budget_usage(budget: Budget) -> str:
    from llm import quotas

    target = {
        Budget.Scope.PROVIDER: budget.provider,
        Budget.Scope.PROGRAM: str(budget.program_id),
        Budget.Scope.PROJECT: str(budget.project_id),
        Budget.Scope.KEY: str(budget.api_key_id),
    }[Budget.Scope(budget.scope)]
    periods = [budgets.Limit(budget.scope, target, "", period, 0.0) for period in budgets.PERIODS]
    spent = budgets.spent(periods)
    if spent is None:
        return "—"
    text = f"${spent[0]:.4f} today, ${spent[1]:.4f} this month"
    if budget.requests_per_minute or budget.tokens_per_minute:
        rate = quotas.Rate(budget.scope, target, "", budget.requests_per_minute, budget.tokens_per_minute)
        used = quotas.usage([rate])
        if used:
            text += f"; {used[0][0]:.0f} calls, {used[0][1]:.0f} tokens this minute"
    return text
