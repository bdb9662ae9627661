"""Operator console for programs: list, JSON editing with path errors, versions (diff, restore), Run page."""

import difflib
import json
from datetime import timedelta
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from dspex_site.console import ReadOnlyAdmin, show_domain_error
from dspex_site.display import ago, summary, trace_rows
from dspex_site.errors import DomainError
from dspex_site.roles import EDIT, RUN
from executions import runner
from executions.models import CognitiveExecution
from monitoring import audit
from programs.api import snapshot
from programs.models import CognitiveProgram, ProgramVersion
from programs.spec import ProgramSpecError, SpecError, program_input_fields, validate_program
from programs.spec.errors import Errors
from programs.spec.variables import VarDecl, check_declarations
from projects import access
from projects.console import ProjectScopedAdmin, VisibleRelatedFilter

admin.site.site_header = "DSPex operator console"
admin.site.site_title = "DSPex"
admin.site.index_title = "Programs, executions, optimizations"

HISTORY_ROWS = 50


# --- JSON editing -----------------------------------------------------------------------------


class PrettyJSONField(forms.JSONField):
    """JSON edited as indented text; a syntax error says where it is."""

    widget = forms.Textarea(attrs={"class": "dspex-json-editor", "rows": 18, "spellcheck": "false"})

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False)

    def to_python(self, value: Any) -> Any:
        if self.disabled or value in self.empty_values:
            return super().to_python(value)
        if isinstance(value, str):
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValidationError(
                    f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.", code="invalid"
                ) from exc
        return super().to_python(value)


class ProgramForm(forms.ModelForm):
    """Pipeline and variables are validated together; each problem is shown with its JSON path."""

    pipeline = PrettyJSONField(help_text='A pipeline spec, e.g. {"signature": "question -> answer"}.')
    variables = PrettyJSONField(
        required=False,
        widget=forms.Textarea(attrs={"class": "dspex-json-editor", "rows": 8, "spellcheck": "false"}),
        help_text='Variables: {"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2}}.',
    )

    class Meta:
        model = CognitiveProgram
        fields = ["name", "description", "status", "pipeline", "variables"]

    def clean_variables(self) -> Any:
        value = self.cleaned_data.get("variables")
        return {} if value in (None, "") else value

    def clean_status(self) -> str:
        status = self.cleaned_data["status"]
        problem = self.instance.status_change_error(status)
        if problem:
            raise forms.ValidationError(problem)
        return status

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data is None:  # as Django's _clean_form: a clean() returning None keeps cleaned_data
            data = self.cleaned_data
        if "pipeline" in data and "variables" in data:
            for error in validate_program(data["pipeline"], data["variables"]):
                field = "variables" if error.path.startswith("variables") else "pipeline"
                self.add_error(field, str(error))
        return data


# --- Run page form ----------------------------------------------------------------------------


def _input_field(name: str, type_text: str) -> forms.Field:
    if type_text == "str":
        return forms.CharField(label=name, strip=False, widget=forms.Textarea(attrs={"rows": 3}))
    if type_text == "int":
        return forms.IntegerField(label=name)
    if type_text == "float":
        return forms.FloatField(label=name)
    if type_text == "bool":
        return forms.BooleanField(label=name, required=False)
    return forms.JSONField(
        label=name,
        help_text=f"JSON of type {type_text}",
        widget=forms.Textarea(attrs={"rows": 3, "class": "dspex-json-editor"}),
    )


def _variable_field(decl: VarDecl) -> forms.Field:
    common = {"label": decl.name, "help_text": decl.description, "initial": decl.default}
    if decl.type == "float":
        return forms.FloatField(min_value=decl.min, max_value=decl.max, **common)
    if decl.type == "int":
        # An int variable's bounds were checked to be integers (variables._check_bounds).
        low, high = cast(int | None, decl.min), cast(int | None, decl.max)
        return forms.IntegerField(min_value=low, max_value=high, **common)
    if decl.type == "bool":
        return forms.BooleanField(required=False, **common)
    if decl.type == "choice":
        # Choices may be numbers or booleans: post their index and map back.
        choices = [
            (str(i), choice if isinstance(choice, str) else json.dumps(choice))
            for i, choice in enumerate(decl.choices)
        ]
        initial = str(decl.choices.index(decl.default)) if decl.default in decl.choices else None
        return forms.TypedChoiceField(
            choices=choices, coerce=lambda i: decl.choices[int(i)], **{**common, "initial": initial}
        )
    return forms.CharField(max_length=decl.max_length, required=False, strip=False, **common)


class RunForm(forms.Form):
    """Built per program: one field per input (`input__<name>`) and per variable (`var__<name>`)."""

    use_cache = forms.BooleanField(required=False, initial=True, label="Use the LLM cache")

    def __init__(self, program: CognitiveProgram, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        use_cache = self.fields.pop("use_cache")
        for name, type_text in program_input_fields(program.pipeline).items():
            self.fields[f"input__{name}"] = _input_field(name, type_text)
        for name, decl in check_declarations(program.variables, Errors()).items():
            self.fields[f"var__{name}"] = _variable_field(decl)
        self.fields["use_cache"] = use_cache

    def group(self, prefix: str) -> list:
        return [self[name] for name in self.fields if name.startswith(prefix)]

    def inputs(self) -> dict[str, Any]:
        return {k.removeprefix("input__"): v for k, v in self.cleaned_data.items() if k.startswith("input__")}

    def variables(self) -> dict[str, Any]:
        return {k.removeprefix("var__"): v for k, v in self.cleaned_data.items() if k.startswith("var__")}

    def add_spec_errors(self, errors: list[SpecError]) -> None:
        """Put `input.x` / `variables.x` errors on their fields; anything else on the form."""
        for error in errors:
            head, _, rest = error.path.partition(".")
            name = rest.split(".")[0].split("[")[0]
            field = {"input": f"input__{name}", "variables": f"var__{name}"}.get(head)
            self.add_error(field if field in self.fields else None, str(error))


# --- Versions ---------------------------------------------------------------------------------


def _spec_text(version: ProgramVersion) -> list[str]:
    body = {"pipeline": version.pipeline, "variables": version.variables}
    return json.dumps(body, indent=2, ensure_ascii=False).splitlines()


def version_diff(old: ProgramVersion, new: ProgramVersion) -> list[tuple[str, str]]:
    """A unified diff of two versions' pipeline and variables as (css class, line) pairs."""
    lines = difflib.unified_diff(
        _spec_text(old), _spec_text(new), f"version {old.version}", f"version {new.version}", lineterm=""
    )
    classes = {"+": "add", "-": "del", "@": "hunk"}
    return [
        (classes.get(line[:1], "") if not line.startswith(("+++", "---")) else "hunk", line) for line in lines
    ]


# --- Admin ------------------------------------------------------------------------------------


@admin.register(CognitiveProgram)
class ProgramAdmin(ProjectScopedAdmin):
    form = ProgramForm
    list_display = [
        "name",
        "run_link",
        "status_badge",
        "version",
        "last_execution",
        "executions_24h",
        "active_result_link",
        "updated_at",
    ]
    search_fields = ["name"]
    list_select_related = ["active_result"]
    readonly_fields = ["version", "input_fields", "active_result_link", "created_at", "updated_at"]
    list_filter = ["status", ("project", VisibleRelatedFilter)]
    change_form_template = "admin/programs/cognitiveprogram/change_form.html"
    save_on_top = True

    def get_list_display(self, request: HttpRequest) -> list:
        columns = list(super().get_list_display(request))
        return columns if request.user.has_perm(RUN) else [c for c in columns if c != "run_link"]

    def get_fieldsets(self, request: HttpRequest, obj: CognitiveProgram | None = None) -> list:
        main = (None, {"fields": ["name", "description", "status", "pipeline", "variables"]})
        if obj is None:  # the project is chosen once, when the program is made
            return [(None, {"fields": ["name", "project", "description", "status", "pipeline", "variables"]})]
        facts = (
            "State",
            {
                "fields": [
                    "project",
                    "version",
                    "input_fields",
                    "active_result_link",
                    "created_at",
                    "updated_at",
                ]
            },
        )
        return [main, facts]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Subqueries, not joins: each row's figures come from the (program, created_at) side
        # of the executions table, and the page stays one query however many rows it has.
        executions = CognitiveExecution.objects.filter(program=OuterRef("pk"))
        since = timezone.now() - timedelta(hours=24)
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_execution_at=Subquery(executions.order_by("-created_at").values("created_at")[:1]),
                recent_executions=Subquery(
                    executions.filter(created_at__gte=since)
                    .order_by()
                    .values("program")
                    .annotate(n=Count("id"))
                    .values("n")[:1],
                    output_field=IntegerField(),
                ),
            )
        )

    # --- columns and read-only fields --------------------------------------------------------
    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: CognitiveProgram) -> str:
        return format_html('<span class="dspex-status dspex-status-{}">{}</span>', obj.status, obj.status)

    @admin.display(description="last execution", ordering="last_execution_at")
    def last_execution(self, obj: CognitiveProgram) -> Any:
        at = getattr(obj, "last_execution_at", None)
        if at is None:
            return "—"
        url = reverse("admin:executions_cognitiveexecution_changelist") + f"?program__id__exact={obj.pk}"
        return format_html('<a href="{}" title="{}">{} ago</a>', url, at.isoformat(), ago(at))

    @admin.display(description="executions (24 h)", ordering="recent_executions")
    def executions_24h(self, obj: CognitiveProgram) -> int:
        return getattr(obj, "recent_executions", None) or 0

    @admin.display(description="active optimization")
    def active_result_link(self, obj: CognitiveProgram) -> Any:
        result = obj.active_result
        if result is None:
            return "—"
        url = reverse("admin:optimization_optimizationresult_change", args=[result.pk])
        score = (result.performance_metrics or {}).get("optimized_score")
        label = result.optimizer_type + (f" ({score})" if score is not None else "")
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.display(description="input fields")
    def input_fields(self, obj: CognitiveProgram) -> str:
        try:
            fields = program_input_fields(obj.pipeline)
        except Exception:  # an old row that no longer validates must still open
            return "—"
        return ", ".join(f"{name}: {kind}" for name, kind in fields.items()) or "—"

    @admin.display(description="")
    def run_link(self, obj: CognitiveProgram) -> Any:
        if not obj.is_runnable:
            return ""
        return format_html(
            '<a class="button" href="{}">Run</a>', reverse("admin:programs_run", args=[obj.pk])
        )

    # --- saving (audited) --------------------------------------------------------------------
    def save_model(self, request: HttpRequest, obj: CognitiveProgram, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = snapshot(CognitiveProgram.objects.get(pk=obj.pk)) if change else {}
            super().save_model(request, obj, form, change)
            if not change or obj.version != before["version"]:
                _claim_version(obj, request.user)
            after = snapshot(obj)
            changes = audit.diff(before, after) if change else after
            audit.record(
                "update" if change else "create", obj, channel="admin", request=request, changes=changes
            )

    def delete_model(self, request: HttpRequest, obj: CognitiveProgram) -> None:
        with transaction.atomic():
            audit.record("delete", obj, channel="admin", request=request, changes=snapshot(obj))
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit.record("delete", obj, channel="admin", request=request, changes=snapshot(obj))
            super().delete_queryset(request, queryset)

    # --- extra pages -------------------------------------------------------------------------
    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<uuid:pk>/run/", wrap(self.run_view), name="programs_run"),
            path("<uuid:pk>/versions/<int:version>/", wrap(self.version_view), name="programs_version"),
            path(
                "<uuid:pk>/versions/<int:version>/restore/",
                wrap(require_POST(self.restore_view)),
                name="programs_restore",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> Any:
        program = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if program is not None:
            versions = list(program.versions.select_related("created_by")[: HISTORY_ROWS + 1])
            context.update(
                versions=versions[:HISTORY_ROWS],
                more_versions=len(versions) > HISTORY_ROWS,
                can_restore=self.has_change_permission(request, program),
                can_run=program.is_runnable
                and request.user.has_perm(RUN)
                and access.allows(request.user, program.project_id, RUN),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    def _program(self, request: HttpRequest, pk: Any) -> CognitiveProgram:
        # The user's projects only: another project's program is a 404, as a missing one.
        program = get_object_or_404(self.get_queryset(request).select_related("active_result"), pk=pk)
        if not self.has_view_permission(request, program):
            raise PermissionDenied
        return program

    def _context(self, request: HttpRequest, program: CognitiveProgram, title: str, **extra: Any) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": program,
            "program": program,
            "title": title,
            "media": self.media,
            "has_view_permission": True,
            **extra,
        }

    def version_view(self, request: HttpRequest, pk: Any, version: int) -> HttpResponse:
        """One version, diffed against another (`?against=N`, default: the version before it)."""
        program = self._program(request, pk)
        shown = get_object_or_404(ProgramVersion, program=program, version=version)
        against_param = request.GET.get("against")
        against_query = program.versions.filter(version__lt=version).order_by("-version")
        if against_param is not None:
            if not against_param.isdigit():
                raise Http404("against must be a version number")
            against_query = program.versions.filter(version=int(against_param))
        against = against_query.first()
        context = self._context(
            request,
            program,
            f"{program.name}: version {version}",
            shown=shown,
            against=against,
            diff=version_diff(against, shown) if against else [],
            spec_text="\n".join(_spec_text(shown)),
            other_versions=list(
                program.versions.exclude(version=version).values_list("version", flat=True)[:200]
            ),
            can_restore=self.has_change_permission(request, program) and version != program.version,
        )
        return TemplateResponse(request, "admin/programs/cognitiveprogram/version.html", context)

    def restore_view(self, request: HttpRequest, pk: Any, version: int) -> HttpResponse:
        """Make an old version current again; this saves it as a new version (history is never rewritten)."""
        program = self._program(request, pk)
        if not self.has_change_permission(request, program):
            raise PermissionDenied
        old = get_object_or_404(ProgramVersion, program=program, version=version)
        change_url = reverse("admin:programs_cognitiveprogram_change", args=[program.pk])
        errors = validate_program(old.pipeline, old.variables)
        if errors:
            self.message_user(
                request,
                f"Version {version} does not validate any more, so it was not restored: "
                + "; ".join(str(e) for e in errors[:5]),
                messages.ERROR,
            )
            return HttpResponseRedirect(change_url)
        with transaction.atomic():
            program = CognitiveProgram.objects.select_for_update().get(pk=program.pk)
            before = snapshot(program)
            program.pipeline, program.variables = old.pipeline, old.variables
            program.save()
            if program.version != before["version"]:
                _claim_version(program, request.user)
            changes = {"restored_version": version, **audit.diff(before, snapshot(program))}
            audit.record("restore", program, channel="admin", request=request, changes=changes)
        if program.version == before["version"]:
            self.message_user(
                request, f"Version {version} is identical to the current one: nothing to restore."
            )
        else:
            self.message_user(
                request, f"Restored version {version} as version {program.version}.", messages.SUCCESS
            )
        return HttpResponseRedirect(change_url)

    def run_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        """Run the program on one input in this request and show output, trace and cost."""
        program = self._program(request, pk)
        if not request.user.has_perm(RUN) or not access.allows(request.user, program.project_id, RUN):
            raise PermissionDenied
        problems = program.spec_errors()
        initial = _rerun_initial(program, request.GET.get("from"))
        form = RunForm(program, request.POST or None, initial=initial) if not problems else None
        execution = None
        if not program.is_runnable:
            self.message_user(request, "This program is archived and cannot be run.", messages.WARNING)
        elif request.method == "POST" and form is not None and form.is_valid():
            execution = self._run(request, program, form)
        context = self._context(
            request,
            program,
            f"Run {program.name}",
            form=form,
            input_fields=form.group("input__") if form else [],
            variable_fields=form.group("var__") if form else [],
            problems=problems,
            execution=execution,
            summary=summary(execution) if execution else None,
            trace_rows=trace_rows(execution.trace) if execution else [],
            output_text=json.dumps(execution.output, indent=2, ensure_ascii=False) if execution else "",
        )
        return TemplateResponse(request, "admin/programs/cognitiveprogram/run.html", context)

    def _run(
        self, request: HttpRequest, program: CognitiveProgram, form: RunForm
    ) -> CognitiveExecution | None:
        def audited(execution: CognitiveExecution) -> None:
            changes = {
                "execution": str(execution.id),
                "input": execution.input,
                "variables": execution.variables,
            }
            audit.record("run", program, channel="admin", request=request, changes=changes)

        try:
            outcome = runner.run_now(
                program,
                form.inputs(),
                form.variables(),
                user=request.user,
                use_cache=form.cleaned_data["use_cache"],
                on_created=audited,
            )
        except ProgramSpecError as exc:  # on the fields they concern
            form.add_spec_errors(exc.errors)
            return None
        except DomainError as exc:  # a spent budget, an archived program: a message, not a 500
            show_domain_error(request, exc)
            return None
        return outcome.execution


def _rerun_initial(program: CognitiveProgram, execution_id: str | None) -> dict[str, Any]:
    """Run-form values taken from an earlier execution of this program (`?from=<execution id>`)."""
    if not execution_id:
        return {}
    try:
        earlier = program.executions.filter(id=execution_id).values("input", "variables").first()
    except ValidationError:  # not a UUID
        earlier = None
    if earlier is None:
        return {}
    initial = {f"input__{k}": v for k, v in (earlier["input"] or {}).items()}
    declared = check_declarations(program.variables, Errors())
    for name, value in (earlier["variables"] or {}).items():
        decl = declared.get(name)
        if decl is not None and decl.type == "choice":
            value = str(decl.choices.index(value)) if value in decl.choices else None
        initial[f"var__{name}"] = value
    return initial


def _claim_version(program: CognitiveProgram, user: Any) -> None:
    """Record who made the program's current version (the model's snapshot does not know)."""
    if getattr(user, "is_authenticated", False):
        ProgramVersion.objects.filter(program=program, version=program.version, created_by=None).update(
            created_by=user
        )


@admin.register(ProgramVersion)
class ProgramVersionAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """Read-only: versions are snapshots written by the program's save()."""

    project_path = "program__project"
    list_display = ["program", "version", "created_by", "created_at"]
    list_select_related = ["program", "created_by"]
    list_filter = [("program", VisibleRelatedFilter)]
    search_fields = ["program__name"]


# --- Releases: aliases and canaries (programs.releases, docs/releases.md) ---------------------
from programs import releases  # noqa: E402
from programs.models import Canary, ProgramAlias  # noqa: E402


@admin.register(ProgramAlias)
class ProgramAliasAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """Read-only: aliases are moved through the API (audited with the diff of what changed; the
    audit log shows each move's `diff`)."""

    project_path = "program__project"
    list_display = ["program", "name", "version", "optimization_result", "updated_by", "updated_at"]
    list_select_related = ["program", "updated_by"]
    list_filter = [("program", VisibleRelatedFilter)]
    search_fields = ["program__name", "name"]


@admin.register(Canary)
class CanaryAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    """A canary's dashboard: per-arm figures, the comparison of the arms and the decision log."""

    project_path = "program__project"
    list_display = ["program", "status", "percent", "sticky_by", "created_at", "finished_at", "outcome"]
    list_select_related = ["program"]
    list_filter = ["status", ("program", VisibleRelatedFilter)]
    search_fields = ["program__name"]
    readonly_fields = [
        "program",
        "status",
        "percent",
        "sticky_by",
        "control_version",
        "control_result",
        "candidate_version",
        "candidate_result",
        "promote_when",
        "abort_when",
        "arms",
        "comparison",
        "decision_log",
        "outcome",
        "created_at",
        "finished_at",
    ]

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        return [
            path("<uuid:pk>/promote/", wrap(require_POST(self.promote_view)), name="programs_canary_promote"),
            path("<uuid:pk>/abort/", wrap(require_POST(self.abort_view)), name="programs_canary_abort"),
            *super().get_urls(),
        ]

    @staticmethod
    def _may_decide(request: HttpRequest, canary: Canary) -> bool:
        """Promoting or aborting changes what production runs: EDIT, as in the API."""
        return request.user.has_perm(EDIT) and access.allows(request.user, canary.program.project_id, EDIT)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict | None = None
    ) -> HttpResponse:
        context = dict(extra_context or {})
        canary = self.get_object(request, object_id)
        if (
            canary is not None
            and canary.status == Canary.Status.RUNNING
            and self._may_decide(request, canary)
        ):
            context["canary_decisions"] = True
        return super().change_view(request, object_id, form_url, extra_context=context)

    def promote_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        return self._decide(request, pk, Canary.Status.PROMOTED)

    def abort_view(self, request: HttpRequest, pk: Any) -> HttpResponse:
        return self._decide(request, pk, Canary.Status.ABORTED)

    def _decide(self, request: HttpRequest, pk: Any, status: str) -> HttpResponse:
        """The API's promote/abort (releases.decide_by_hand), audited with channel `admin`."""
        canary = self.get_object(request, str(pk))  # project-scoped: another project's is a 404
        if canary is None:
            raise Http404
        if not self._may_decide(request, canary):
            raise PermissionDenied
        try:
            releases.decide_by_hand(canary, status, channel="admin", request=request)
        except DomainError as exc:  # no longer running (decided meanwhile by the rules or a person)
            show_domain_error(request, exc)
        else:
            messages.success(request, f"Canary {canary.outcome}.")
        return HttpResponseRedirect(reverse("admin:programs_canary_change", args=[canary.pk]))

    @admin.display(description="Per arm")
    def arms(self, obj: Canary) -> str:
        report = releases.report(obj)
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td><td>{}</td><td>{} (n={}, CI {})</td><td>{}</td><td>{} / {}</td></tr>",
            (
                (
                    name,
                    arm["executions"],
                    arm["error_rate"],
                    arm["feedback"]["mean"],
                    arm["feedback"]["count"],
                    arm["feedback"]["ci"],
                    arm["cost_per_execution_usd"],
                    arm["latency_ms"]["p50"],
                    arm["latency_ms"]["p95"],
                )
                for name, arm in report["arms"].items()
            ),
        )
        head = mark_safe(  # a constant
            "<tr><th>arm</th><th>executions</th><th>error rate</th><th>feedback</th>"
            "<th>cost / execution (USD)</th><th>latency p50 / p95 (ms)</th></tr>"
        )
        return format_html("<table>{}{}</table>", head, rows)

    @admin.display(description="Candidate - control")
    def comparison(self, obj: Canary) -> str:
        compared = releases.report(obj)["comparison"]
        if compared is None:
            return "Not enough feedback yet (two scores per arm at least)."
        return (
            f"difference {compared['difference']}, {compared['confidence']:.0%} CI {compared['ci']}, "
            f"p = {compared['p_value']} (Welch's t-test)"
        )

    @admin.display(description="Decisions")
    def decision_log(self, obj: Canary) -> str:
        if not obj.decisions:
            return "None yet."
        items = format_html_join(
            "", "<li>{} ({}): {}</li>", ((d.get("at"), d.get("by"), d.get("reason")) for d in obj.decisions)
        )
        return format_html("<ul>{}</ul>", items)


# --- Retrieval corpora (owned by the caching/retrieval work; kept as one separate block) ------
from programs.models import Corpus, Document  # noqa: E402


class DocumentInline(admin.TabularInline):
    model = Document
    fields = ["external_id", "text", "embedded_hash"]
    readonly_fields = ["embedded_hash"]
    extra = 0
    show_change_link = True


@admin.register(Corpus)
class CorpusAdmin(ProjectScopedAdmin):
    """Corpora for Retrieve steps; saving queues embedding of new and changed documents."""

    list_display = ["name", "project", "status", "embedded", "total", "embedding_model", "updated_at"]
    list_filter = ["status", ("project", VisibleRelatedFilter)]
    search_fields = ["name"]
    readonly_fields = ["status", "embedded", "total", "error"]
    inlines = [DocumentInline]
    actions = ["queue_embedding"]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        corpus = form.instance
        audit.record("update" if change else "create", corpus, channel="admin", request=request)
        self._queue(corpus.id)

    @admin.action(description="Embed new and changed documents")
    def queue_embedding(self, request: HttpRequest, queryset: QuerySet) -> None:
        for corpus in queryset:
            self._queue(corpus.id)
        self.message_user(request, f"Embedding queued for {queryset.count()} corpora.", messages.SUCCESS)

    @staticmethod
    def _queue(corpus_id: int) -> None:
        from programs.tasks import embed_corpus

        transaction.on_commit(lambda: embed_corpus.delay(corpus_id))


@admin.register(Document)
class DocumentAdmin(ProjectScopedAdmin):
    project_path = "corpus__project"
    list_display = ["external_id", "corpus", "updated_at"]
    list_filter = [("corpus", VisibleRelatedFilter)]
    search_fields = ["external_id", "text"]
    readonly_fields = ["embedded_hash"]
