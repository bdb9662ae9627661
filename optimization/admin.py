"""Operator console for datasets, runs (live progress, cancel), results (apply, roll back) and schedules."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from dspex_site.console import show_domain_error
from dspex_site.errors import DomainError
from optimization import results, schedules
from optimization.models import Dataset, Example, OptimizationResult, OptimizationRun, OptimizationSchedule
from projects.console import ProjectScopedAdmin, VisibleRelatedFilter


class ExampleInline(admin.TabularInline):
    model = Example
    extra = 0
    fields = ["position", "input", "output"]
    show_change_link = False


@admin.register(Dataset)
class DatasetAdmin(ProjectScopedAdmin):
    list_display = ["name", "project", "created_at", "updated_at"]
    list_filter = [("project", VisibleRelatedFilter)]
    search_fields = ["name"]
    inlines = [ExampleInline]


@admin.register(OptimizationRun)
class OptimizationRunAdmin(ProjectScopedAdmin):
    project_path = "program__project"
    list_display = [
        "id",
        "program",
        "optimizer",
        "status",
        "phase",
        "trials",
        "best_score",
        "cost",
        "created_at",
    ]
    list_filter = ["status", "optimizer"]
    list_select_related = ["program"]
    readonly_fields = [f.name for f in OptimizationRun._meta.fields]
    actions = ["cancel_runs"]

    @admin.display(description="phase")
    def phase(self, run: OptimizationRun) -> str:
        return run.progress.get("phase", "")

    @admin.display(description="trials")
    def trials(self, run: OptimizationRun) -> str:
        p = run.progress
        return f"{p.get('trials_done', 0)} / {p.get('trials_total') or '?'}" if p else ""

    @admin.display(description="best score")
    def best_score(self, run: OptimizationRun) -> Any:
        return run.progress.get("best_score")

    @admin.display(description="LM calls / cost")
    def cost(self, run: OptimizationRun) -> str:
        p = run.progress
        return f"{p.get('lm_calls', 0)} / ${p.get('cost_usd', 0)}" if p else ""

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet) -> None:
        cancelled = sum(run.cancel() for run in queryset)
        self.message_user(request, f"Cancelled {cancelled} run(s).", messages.SUCCESS)


@admin.register(OptimizationResult)
class OptimizationResultAdmin(ProjectScopedAdmin):
    project_path = "program__project"
    list_display = ["id", "program", "program_version", "optimizer_type", "scores", "created_at"]
    list_select_related = ["program"]
    list_filter = ["optimizer_type"]
    actions = ["apply_result", "clear_active_result"]

    @admin.display(description="baseline → optimized")
    def scores(self, result: OptimizationResult) -> str:
        return f"{result.baseline_score} → {result.optimized_score}"

    @admin.action(description="Apply: make it its program's active parameters")
    def apply_result(self, request: HttpRequest, queryset: QuerySet) -> None:
        for result in queryset.select_related("program"):
            try:
                results.set_active(result.program, result, channel="admin", request=request)
            except DomainError as exc:  # the result does not fit the program's current version
                show_domain_error(request, exc)
            else:
                self.message_user(request, f"Applied {result} to {result.program}.", messages.SUCCESS)

    @admin.action(description="Roll back: their programs run with no optimized parameters")
    def clear_active_result(self, request: HttpRequest, queryset: QuerySet) -> None:
        for result in queryset.select_related("program"):
            results.set_active(result.program, None, channel="admin", request=request)
        self.message_user(request, "Cleared the active result of the selected results' programs.")


@admin.register(OptimizationSchedule)
class OptimizationScheduleAdmin(ProjectScopedAdmin):
    project_path = "program__project"
    list_display = ["name", "program", "optimizer", "cron", "interval_s", "enabled"]
    readonly_fields = ["periodic_task"]

    def save_model(self, request: HttpRequest, obj: OptimizationSchedule, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        schedules.sync_periodic_task(obj)
