"""Operator console for executions: a read-only list and a detail page that reads the trace as a timeline."""

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from dspex_site.console import ReadOnlyAdmin, show_domain_error
from dspex_site.display import money, pre, pretty, summary, trace_rows
from dspex_site.roles import RUN
from executions import feedback, sessions
from executions.models import Batch, CognitiveExecution, Session
from projects import access
from projects.console import ProjectScopedAdmin, VisibleRelatedFilter


class FeedbackForm(forms.Form):
    """Feedback on an execution from the console (the API's `POST .../feedback/` fields)."""

    score = forms.FloatField(min_value=0.0, max_value=1.0, required=False, help_text="0 (bad) .. 1 (good)")
    label = forms.CharField(max_length=100, required=False)
    corrected_output = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="What the output should have been: an object of output fields (JSON).",
    )
    comment = forms.CharField(required=False, max_length=10_000, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, execution: CognitiveExecution, *args: Any, **kwargs: Any) -> None:
        self.execution = execution
        super().__init__(*args, **kwargs)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for problem in feedback.corrected_output_problems(self.execution, data.get("corrected_output")):
            self.add_error("corrected_output", f"{problem['path']}: {problem['message']}")
        if not self.errors and not any(
            data.get(name) not in (None, "") for name in ("score", "label", "corrected_output", "comment")
        ):
            raise forms.ValidationError("Give at least one of score, label, corrected output, comment.")
        return data


class CreatedFilter(admin.DateFieldListFilter):
    title = "created"


class FeedbackFilter(admin.SimpleListFilter):
    """Executions with or without feedback, or with a low or high mean score (the row's summary)."""

    title = "feedback"
    parameter_name = "feedback"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("yes", "has feedback"),
            ("no", "no feedback"),
            ("low", "score < 0.5"),
            ("high", "score ≥ 0.5"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "yes":
            return queryset.filter(feedback_count__gt=0)
        if value == "no":
            return queryset.filter(feedback_count=0)
        if value == "low":
            return queryset.filter(feedback_score__lt=0.5)
        if value == "high":
            return queryset.filter(feedback_score__gte=0.5)
        return queryset


@admin.register(CognitiveExecution)
class ExecutionAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """Read-only: executions are written by the runner only."""

    project_path = "program__project"

    list_display = [
        "short_id",
        "program_link",
        "status_badge",
        "duration",
        "lm_calls",
        "tokens",
        "cost",
        "cache_hits",
        "feedback_column",
        "created_at",
    ]
    list_filter = [
        "status",
        ("created_at", CreatedFilter),
        ("program", VisibleRelatedFilter),
        FeedbackFilter,
    ]
    list_select_related = ["program"]
    search_fields = ["id"]
    search_help_text = "Execution id (full, or its first characters)"
    list_per_page = 50
    # A COUNT(*) over millions of executions on every page view is what makes admins slow.
    show_full_result_count = False
    date_hierarchy = None
    change_form_template = "admin/executions/cognitiveexecution/change_form.html"
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "program_link",
                    "status_badge",
                    "created_at",
                    "duration",
                    "input_json",
                    "variables_json",
                    "output_json",
                    "error_json",
                    "feedback_line",
                ]
            },
        ),
        (
            "Details",
            {
                "classes": ["collapse"],
                "fields": [
                    "id",
                    "program_version",
                    "optimization_result",
                    "created_by",
                    "started_at",
                    "finished_at",
                    "attempts",
                    "priority",
                    "use_cache",
                    "batch",
                    "session_link",
                    "turn",
                ],
            },
        ),
    ]
    readonly_fields = flatten_fieldsets(fieldsets)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        match = request.resolver_match
        if match is not None and match.url_name and match.url_name.endswith("_changelist"):
            # The list never shows traces, inputs or outputs: don't load megabytes of JSON per page.
            queryset = queryset.defer("trace", "input", "output", "error", "variables")
        return queryset.select_related("program", "created_by", "optimization_result")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple:
        term = search_term.strip()
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            pass
        # A partial id: prefix on the text form; anything else matches nothing rather than scanning.
        hexdigits = term.replace("-", "")
        if term and all(c in "0123456789abcdefABCDEF-" for c in term) and len(hexdigits) >= 4:
            return queryset.filter(id__startswith=term.lower()), False
        return (queryset.none(), False) if term else (queryset, False)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> Any:
        execution = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if execution is not None:
            context["trace_rows"] = trace_rows(execution.trace)
            context["summary"] = summary(execution)
            context["execution"] = execution
            context["can_rerun"] = request.user.has_perm(RUN)
            context["feedback_entries"] = list(execution.feedback_entries.all()[:100])
            if self._may_give_feedback(request, execution):
                context["feedback_form"] = FeedbackForm(execution)
        return super().change_view(request, object_id, form_url, extra_context=context)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<uuid:pk>/feedback/", wrap(require_POST(self.feedback_view)), name="executions_feedback"),
            *super().get_urls(),
        ]

    @staticmethod
    def _may_give_feedback(request: HttpRequest, execution: CognitiveExecution) -> bool:
        return (
            execution.is_finished
            and request.user.has_perm(RUN)
            and access.allows(request.user, execution.program.project_id, RUN)
        )

    def feedback_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        """Add the user's feedback (superseding their earlier entry) and go back to the page."""
        execution = self.get_object(request, str(pk))  # project-scoped: another project's is a 404
        if execution is None:
            raise Http404
        if not self._may_give_feedback(request, execution):
            raise PermissionDenied
        change_url = reverse("admin:executions_cognitiveexecution_change", args=[execution.pk])
        form = FeedbackForm(execution, request.POST)
        if not form.is_valid():
            for field, errors in form.errors.items():
                where = "" if field == "__all__" else f"{field}: "
                for error in errors:
                    messages.error(request, f"Feedback not saved: {where}{error}")
            return HttpResponseRedirect(change_url)
        data = form.cleaned_data
        try:
            feedback.record(
                execution,
                user=request.user,
                channel="admin",
                request=request,
                score=data.get("score"),
                label=data.get("label") or "",
                corrected_output=data.get("corrected_output"),
                comment=data.get("comment") or "",
            )
        except feedback.FeedbackRefused as exc:
            show_domain_error(request, exc)
            return HttpResponseRedirect(change_url)
        messages.success(request, "Feedback saved.")
        return HttpResponseRedirect(change_url)

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: CognitiveExecution) -> str:
        return str(obj.id)[:8]

    @admin.display(description="program", ordering="program__name")
    def program_link(self, obj: CognitiveExecution) -> str:
        url = reverse("admin:programs_cognitiveprogram_change", args=[obj.program_id])
        return format_html(
            '<a href="{}">{}</a> <span class="dspex-muted">v{}</span>', url, obj.program, obj.program_version
        )

    @admin.display(description="session")
    def session_link(self, obj: CognitiveExecution) -> str:
        if obj.session_id is None:
            return "—"
        url = reverse("admin:executions_session_change", args=[obj.session_id])
        return format_html(
            '<a href="{}">{}</a> <span class="dspex-muted">turn {}</span>', url, obj.session_id, obj.turn
        )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: CognitiveExecution) -> str:
        return format_html('<span class="dspex-status dspex-status-{}">{}</span>', obj.status, obj.status)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: CognitiveExecution) -> str:
        return "—" if obj.duration_ms is None else f"{obj.duration_ms} ms"

    @admin.display(description="LM calls")
    def lm_calls(self, obj: CognitiveExecution) -> int:
        return (obj.metrics or {}).get("lm_calls", 0)

    @admin.display(description="tokens")
    def tokens(self, obj: CognitiveExecution) -> int:
        metrics = obj.metrics or {}
        return metrics.get("prompt_tokens", 0) + metrics.get("completion_tokens", 0)

    @admin.display(description="cost")
    def cost(self, obj: CognitiveExecution) -> str:
        return money((obj.metrics or {}).get("cost_usd")) if obj.metrics else "—"

    @admin.display(description="cache hits")
    def cache_hits(self, obj: CognitiveExecution) -> int:
        return (obj.metrics or {}).get("cache_hits", 0)

    @admin.display(description="input")
    def input_json(self, obj: CognitiveExecution) -> str:
        return pre(obj.input)

    @admin.display(description="variables")
    def variables_json(self, obj: CognitiveExecution) -> str:
        return pre(obj.variables)

    @admin.display(description="output")
    def output_json(self, obj: CognitiveExecution) -> str:
        return pre(obj.output)

    @admin.display(description="feedback", ordering="feedback_score")
    def feedback_column(self, obj: CognitiveExecution) -> str:
        if not obj.feedback_count:
            return "—"
        score = "—" if obj.feedback_score is None else f"{obj.feedback_score:.2f}"
        return f"{score} ({obj.feedback_count})"

    @admin.display(description="feedback")
    def feedback_line(self, obj: CognitiveExecution) -> str:
        if not obj.feedback_count:
            return "—"
        score = "no score" if obj.feedback_score is None else f"mean score {obj.feedback_score:.2f}"
        return f"{obj.feedback_count} current {'entry' if obj.feedback_count == 1 else 'entries'}, {score}"

    @admin.display(description="error")
    def error_json(self, obj: CognitiveExecution) -> str:
        if not obj.error:
            return "—"
        return format_html('<pre class="dspex-json dspex-error">{}</pre>', pretty(obj.error))


@admin.register(Batch)
class BatchAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    project_path = "program__project"
    list_display = ["id", "program", "created_at", "cancelled_at"]
    list_select_related = ["program"]
    list_filter = [("program", VisibleRelatedFilter)]
    show_full_result_count = False


@admin.register(Session)
class SessionAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """Read-only: sessions are made and used through the API. The page lists every turn (failed
    ones too, each a link to its execution); the API's history holds the succeeded ones."""

    project_path = "program__project"
    list_display = ["id", "program", "turn_count", "created_at", "expires_at"]
    list_select_related = ["program"]
    list_filter = [("program", VisibleRelatedFilter)]
    search_fields = ["id"]
    show_full_result_count = False
    fields = (
        "id",
        "program",
        "metadata_json",
        "ttl_s",
        "created_by",
        "created_at",
        "expires_at",
        "turn_list",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return sessions.with_turn_state(super().get_queryset(request))

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple:
        try:
            return queryset.filter(id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return (queryset.none(), False) if search_term.strip() else (queryset, False)

    @admin.display(description="turns")
    def turn_count(self, obj: Session) -> int:
        return getattr(obj, "turns", 0)

    @admin.display(description="metadata")
    def metadata_json(self, obj: Session) -> str:
        return pre(obj.metadata)

    @admin.display(description="turns")
    def turn_list(self, obj: Session) -> str:
        turns = obj.executions.order_by("turn", "created_at").only(
            "id", "turn", "status", "duration_ms", "created_at"
        )
        rows = format_html_join(
            "",
            '<tr><td>{}</td><td><a href="{}">{}</a></td>'
            '<td><span class="dspex-status dspex-status-{}">{}</span></td><td>{}</td><td>{}</td></tr>',
            (
                (
                    execution.turn,
                    reverse("admin:executions_cognitiveexecution_change", args=[execution.id]),
                    str(execution.id)[:8],
                    execution.status,
                    execution.status,
                    "—" if execution.duration_ms is None else f"{execution.duration_ms} ms",
                    execution.created_at.isoformat(timespec="seconds"),
                )
                for execution in turns
            ),
        )
        if not rows:
            return "No turns yet."
        return format_html(
            '<table class="dspex-turns"><thead><tr><th>turn</th><th>execution</th><th>status</th>'
            "<th>duration</th><th>created</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )
