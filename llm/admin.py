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

from dspex_site.roles import is_operator
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
    list_display = ("scope", "target_label", "daily_limit_usd", "monthly_limit_usd", "enabled", "updated_at")
    list_filter = ("scope", "enabled")
    autocomplete_fields = ()
    raw_id_fields = ("program",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Provider budgets are site-wide (every operator sees them, as before); a program's
        budget belongs to the program's project."""
        queryset = super().get_queryset(request)
        if access.visible_ids(request.user) is None:
            return queryset
        visible = access.visible(queryset, request.user, "program__project")
        return queryset.filter(Q(scope=Budget.Scope.PROVIDER) | Q(pk__in=visible.values("pk")))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "program":
            kwargs["queryset"] = access.visible(
                db_field.related_model._default_manager.all(), request.user, "project"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

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
