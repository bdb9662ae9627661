"""REST API for programs, including `execute`."""

from typing import Any

from django.db import transaction
from django.http import Http404
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.api.schema import raises
from dspex_site.errors import QueueUnavailable
from executions import runner, streaming
from executions.models import CognitiveExecution
from executions.serializers import ExecutionSerializer, QueuedExecutionSerializer, execution_data
from llm.budgets import BudgetExceeded
from monitoring import audit
from optimization import dspy_state
from optimization.serializers import ResultSerializer
from programs import releases
from programs.filters import ProgramFilter
from programs.models import Canary, CognitiveProgram, ProgramAlias
from programs.serializers import (
    AliasSerializer,
    AliasSetSerializer,
    CanarySerializer,
    CanaryStartSerializer,
    ExecuteSerializer,
    ProgramSerializer,
)
from projects import access
from projects.api import ProjectScoped

AUDITED_FIELDS = ("name", "description", "pipeline", "variables", "status")


def snapshot(program: CognitiveProgram) -> dict[str, Any]:
    return {field: getattr(program, field) for field in AUDITED_FIELDS} | {"version": program.version}


class ProgramViewSet(ProjectScoped, viewsets.ModelViewSet):
    queryset = CognitiveProgram.objects.all()
    serializer_class = ProgramSerializer
    filterset_class = ProgramFilter
    parser_classes = [LimitedJSONParser]

    def filter_queryset(self, queryset: Any) -> Any:
        # The filters select lists; a detail route (execute, the hot path) needs none of their work.
        return queryset if self.detail else super().filter_queryset(queryset)

    def perform_create(self, serializer: "BaseSerializer[CognitiveProgram]") -> None:
        with transaction.atomic():
            program = serializer.save()
            audit.record("create", program, channel="api", request=self.request, changes=snapshot(program))

    def perform_update(self, serializer: "BaseSerializer[CognitiveProgram]") -> None:
        assert serializer.instance is not None  # UpdateModelMixin.update passes get_object()
        with transaction.atomic():
            before = snapshot(serializer.instance)
            program = serializer.save()
            changes = audit.diff(before, snapshot(program))
            audit.record("update", program, channel="api", request=self.request, changes=changes)

    def perform_destroy(self, instance: CognitiveProgram) -> None:
        with transaction.atomic():
            audit.record("delete", instance, channel="api", request=self.request, changes=snapshot(instance))
            instance.delete()

    @extend_schema(
        request={"application/json": OpenApiTypes.OBJECT},
        responses={201: ResultSerializer},
        description="Body: the JSON plain DSPy's `module.save(path)` writes (docs/dspy.md).",
    )
    @raises(dspy_state.StateDoesNotFit)
    @action(detail=True, methods=["post"], url_path="import-state")
    def import_state(self, request: Request, pk: str | None = None) -> Response:
        """Store a plain DSPy state file of a program of the same structure as an `imported`
        result (optimization.dspy_state); checked as a whole, nothing stored on a mismatch."""
        result = dspy_state.import_state(self.get_object(), request.data, request=request)
        return Response(ResultSerializer(result).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: AliasSerializer(many=True)})
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def aliases(self, request: Request, pk: str | None = None) -> Response:
        """The program's aliases (named releases: a version and an optimization result or none)."""
        program = self.get_object()
        return Response(AliasSerializer(ProgramAlias.objects.filter(program=program), many=True).data)

    @extend_schema(
        request=AliasSetSerializer,
        responses={200: AliasSerializer, 201: AliasSerializer},
        description="Point the alias at a release; audited with the diff of what changed "
        "(pipeline, variables, instructions and demos per predictor).",
    )
    @raises(releases.ReleaseInvalid)
    @action(
        detail=True,
        methods=["put"],
        url_path=r"aliases/(?P<name>[-a-zA-Z0-9_]{1,64})",
        filterset_class=None,
        pagination_class=None,
    )
    def set_alias(self, request: Request, pk: str | None = None, name: str = "") -> Response:
        program = self.get_object()
        body = AliasSetSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        row, created = releases.set_alias(
            program, name, data["version"], data["optimization_result"], channel="api", request=request
        )
        return Response(AliasSerializer(row).data, status=status.HTTP_201_CREATED if created else 200)

    @extend_schema(methods=["GET"], request=None, responses={200: CanarySerializer})
    @extend_schema(methods=["POST"], request=CanaryStartSerializer, responses={201: CanarySerializer})
    @raises(releases.ReleaseInvalid, releases.CanaryConflict, (404, "No canary (GET) of this program."))
    @action(detail=True, methods=["get", "post"], filterset_class=None, pagination_class=None)
    def canary(self, request: Request, pk: str | None = None) -> Response:
        """GET: the running canary (else the latest) with per-arm figures and its decision log.
        POST: start one (409 `canary_conflict` if one is running)."""
        program = self.get_object()
        if request.method == "GET":
            canary = Canary.objects.filter(program=program).order_by("-created_at").first()
            if canary is None:
                raise Http404
            return Response(CanarySerializer(canary).data)
        body = CanaryStartSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        canary = releases.start_canary(
            program,
            data["candidate"]["version"],
            data["candidate"]["optimization_result"],
            data["percent"],
            data["sticky_by"],
            data["promote_when"],
            data["abort_when"],
            channel="api",
            request=request,
        )
        return Response(CanarySerializer(canary).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: CanarySerializer})
    @raises(releases.CanaryConflict)
    @action(detail=True, methods=["post"], url_path="canary/promote")
    def canary_promote(self, request: Request, pk: str | None = None) -> Response:
        """Make the running canary's candidate the program's current release."""
        return self._finish_canary(request, Canary.Status.PROMOTED)

    @extend_schema(request=None, responses={200: CanarySerializer})
    @raises(releases.CanaryConflict)
    @action(detail=True, methods=["post"], url_path="canary/abort")
    def canary_abort(self, request: Request, pk: str | None = None) -> Response:
        """Stop the running canary; the control stays the current release."""
        return self._finish_canary(request, Canary.Status.ABORTED)

    def _finish_canary(self, request: Request, outcome: str) -> Response:
        program = self.get_object()
        canary = Canary.objects.filter(program=program, status=Canary.Status.RUNNING).first()
        if canary is None:
            raise releases.CanaryConflict(f"No canary of program {program.name} is running.")
        releases.decide_by_hand(canary, outcome, channel="api", request=request)
        canary.refresh_from_db()
        return Response(CanarySerializer(canary).data)

    @extend_schema(
        request=ExecuteSerializer,
        responses={
            (200, "application/json"): ExecutionSerializer,
            (200, "text/event-stream"): streaming.SSE_RESPONSE,
            202: QueuedExecutionSerializer,
            402: OpenApiResponse(ExecutionSerializer, description="A spend limit was reached during the run"),
            409: OpenApiResponse(ExecutionSerializer, description="Cancelled while it ran"),
            422: OpenApiResponse(ExecutionSerializer, description="The program failed on this input"),
            502: OpenApiResponse(ExecutionSerializer, description="The provider failed"),
            503: OpenApiResponse(
                ExecutionSerializer, description="Refused for now (breaker, rate limit, bulkhead)"
            ),
        },
    )
    @raises(runner.ProgramNotRunnable, BudgetExceeded, QueueUnavailable, releases.ReleaseInvalid)
    @action(detail=True, methods=["post"])
    def execute(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """Run the program on one input: `wait=true` returns the finished execution."""
        # From this process's cache of runnable programs (executions.runner.runnable_program):
        # the hot path's lookup without a query per request.
        try:
            program = runner.runnable_program(pk)
        except CognitiveProgram.DoesNotExist:
            raise Http404 from None
        # Another project's program is a 404, as a missing one (RolePermission; the roles are
        # cached per process, so this reads nothing when warm).
        if not access.sees(request.user, program.program.project_id):
            raise Http404
        self.check_object_permissions(request, program.program)
        data = execute_body(request.data)
        args = (program, data["input"], data["variables"])
        release = releases.for_request(
            program.program, data["alias"], user=request.user, input_data=data["input"]
        )
        options = {
            "user": request.user,
            "priority": data["priority"],
            "use_cache": data["cache"],
            "release": release,
        }
        if data["stream"]:  # refusals raise here, before the stream starts (executions.streaming)
            started = runner.start_now(*args, **options)
            return streaming.stream_response(
                request, started, lambda outcome: execution_data(outcome.execution)
            )
        if data["wait"]:
            return execution_response(runner.run_now(*args, **options))
        unpublished: list[str] = []
        # One INSERT, committed on its own; the task is published once it is (inside a
        # transaction of the caller's, after that commits).
        execution = runner.create_execution(*args, **options)
        transaction.on_commit(lambda: publish(execution, unpublished))
        if unpublished:
            execution.fail_unpublished(unpublished[0])
            raise QueueUnavailable(unpublished[0])
        return Response(QueuedExecutionSerializer(execution).data, status=status.HTTP_202_ACCEPTED)


_EXECUTE_FIELDS = ExecuteSerializer._declared_fields
_CHOICES = {name: set(field.choices) for name, field in _EXECUTE_FIELDS.items() if hasattr(field, "choices")}
_BOOLEANS = {name for name, field in _EXECUTE_FIELDS.items() if isinstance(field, serializers.BooleanField)}


def execute_body(data: Any) -> dict[str, Any]:
    """`ExecuteSerializer`'s validated data. A body every field of which already has its final
    type and an allowed value (what clients send) is taken as is, with the serializer's defaults;
    anything else goes through the serializer, which says what is wrong and where."""
    if (
        isinstance(data, dict)
        and data.get("input") is not None
        and data.keys() <= _EXECUTE_FIELDS.keys()
        and all(type(data[name]) is bool for name in _BOOLEANS & data.keys())
        and all(
            type(data[name]) is str and data[name] in choices
            for name, choices in _CHOICES.items()
            if name in data
        )
        and data.get("variables", {}) is not None
        and type(data.get("alias", "")) is str
        and len(data.get("alias", "")) <= 64
    ):
        return {
            name: data[name] if name in data else field.get_default()
            for name, field in _EXECUTE_FIELDS.items()
        }
    body = ExecuteSerializer(data=data)
    body.is_valid(raise_exception=True)
    return body.validated_data


def execution_response(outcome: runner.Outcome) -> Response:
    """A finished execution with the status that says how it ended (`http_status_for`)."""
    response = Response(execution_data(outcome.execution), status=http_status_for(outcome))
    retry_after = (outcome.execution.error or {}).get("retry_after")
    if response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE and retry_after:
        response["Retry-After"] = f"{float(retry_after):g}"
    return response


def publish(execution: CognitiveExecution, unpublished: list[str]) -> None:
    """Publish the execution's task after commit; a broker outage is reported, not raised."""
    try:
        execution.publish()
    except Exception as exc:
        unpublished.append(
            "The execution queue is unavailable right now; nothing was queued, please retry "
            f"({type(exc).__name__})."
        )


def http_status_for(outcome: runner.Outcome) -> int:
    """200 succeeded; 502 the provider failed; 503 refused for now (breaker open, rate limit,
    bulkhead); 402 budget spent; 422 the program failed on this input."""
    execution = outcome.execution
    if execution.status == execution.Status.SUCCEEDED:
        return status.HTTP_200_OK
    if execution.status == execution.Status.CANCELLED:
        return status.HTTP_409_CONFLICT
    error_type = (execution.error or {}).get("type", "")
    if error_type in {"rate_limited", "circuit_open", "bulkhead_full"}:
        return status.HTTP_503_SERVICE_UNAVAILABLE  # refused or throttled: try again later
    if error_type == "budget_exceeded":
        return status.HTTP_402_PAYMENT_REQUIRED
    if error_type.startswith("provider"):
        return status.HTTP_502_BAD_GATEWAY
    return status.HTTP_422_UNPROCESSABLE_ENTITY
