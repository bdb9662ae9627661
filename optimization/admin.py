"""Operator console for datasets, runs (live progress, cancel), results (apply, roll back) and schedules."""

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from dspex_site.console import show_domain_error
from dspex_site.errors import DomainError
from optimization import results, runner, schedules
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


class ScheduleForm(forms.ModelForm):
    """The API's checks (optimization.schedules.check_schedule), each error on its field."""

    class Meta:
        model = OptimizationSchedule
        fields = [
            "name",
            "program",
            "dataset",
            "from_executions",
            "optimizer",
            "metric",
            "config",
            "split",
            "apply",
            "canary",
            "cron",
            "interval_s",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            rules, canary = schedules.check_schedule(
                data.get("program"),
                data.get("dataset"),
                data.get("from_executions"),
                data.get("optimizer"),
                data.get("metric"),
                data.get("config") or {},
                data.get("split") or {},
                bool(data.get("apply")),
                data.get("canary"),
                data.get("cron") or "",
                data.get("interval_s"),
            )
        except runner.RunRequestError as exc:
            for error in exc.errors:
                name = error["path"].split(".")[0].split("[")[0]
                self.add_error(name if name in self.fields else None, f"{error['path']}: {error['message']}")
        else:
            data["from_executions"], data["canary"] = rules, canary
        return data


@admin.register(OptimizationSchedule)
class OptimizationScheduleAdmin(ProjectScopedAdmin):
    """Scheduled optimizations; with `from_executions` and `canary` the unattended loop
    (docs/releases.md, "The loop"). `last_message` says what the last tick did."""

    form = ScheduleForm
    project_path = "program__project"
    list_display = ["name", "program", "optimizer", "cron", "interval_s", "loop", "enabled", "last_fired_at"]
    readonly_fields = ["periodic_task", "last_fired_at", "last_message"]

    @admin.display(description="examples → result")
    def loop(self, obj: OptimizationSchedule) -> str:
        source = "from executions" if obj.from_executions is not None else str(obj.dataset or "")
        outcome = (
            f"canary {obj.canary.get('percent')}%" if obj.canary else ("apply" if obj.apply else "store")
        )
        return f"{source} → {outcome}"

    def save_model(self, request: HttpRequest, obj: OptimizationSchedule, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        schedules.sync_periodic_task(obj)
