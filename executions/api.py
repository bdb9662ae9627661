"""REST API for executions (list, detail, cancel), batches (create, progress, results, cancel)
and sessions (create, list, read with history, delete, turns)."""

from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import Http404, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api.errors import APIError
from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.api.replica import ReplicaReads
from dspex_site.api.schema import raises
from dspex_site.api.serializers import referenced_row
from dspex_site.db import read_alias
from dspex_site.errors import QueueUnavailable
from dspex_site.roles import RUN
from executions import batches, feedback, runner, sessions, streaming
from executions.filters import ExecutionFilter, SessionFilter
from executions.models import Batch, CognitiveExecution, Session
from executions.runner import ProgramNotRunnable
from executions.serializers import (
    BatchCreateSerializer,
    BatchSerializer,
    ExecutionSerializer,
    ExecutionSummarySerializer,
    FeedbackCreateSerializer,
    FeedbackSerializer,
    QueuedTurnSerializer,
    SessionCreateSerializer,
    SessionDetailSerializer,
    SessionSerializer,
    TurnSerializer,
    execution_data,
)
from llm.budgets import BudgetExceeded
from programs import releases
from programs.api import execution_response, publish
from programs.models import CognitiveProgram
from projects import access
from projects.api import ProjectScoped


class ExecutionViewSet(ReplicaReads, ProjectScoped, viewsets.ReadOnlyModelViewSet):
    queryset = CognitiveExecution.objects.all()
    project_path = "program__project"
    filterset_class = ExecutionFilter

    @property
    def required_kinds(self) -> dict[str, str]:
        """Giving feedback (POST) is running-kind work (operators, the `execute` scope of API
        keys), not an edit; reading it is a read like any other (dspex_site.permissions)."""
        request = getattr(self, "request", None)
        return {"feedback": RUN} if request is not None and request.method == "POST" else {}

    def get_queryset(self):
        qs = super().get_queryset()
        # The trace can be megabytes: list pages never load it.
        return qs.defer("trace") if self.action == "list" else qs

    def get_serializer_class(self) -> type:
        return ExecutionSummarySerializer if self.action == "list" else ExecutionSerializer

    @extend_schema(request=None, responses={200: ExecutionSerializer})
    @raises((409, "Already finished (`already_finished`)."))
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a pending or running execution; a finished one answers 409."""
        execution = self.get_object()
        if not execution.cancel():
            raise APIError(
                status.HTTP_409_CONFLICT,
                "already_finished",
                f"Execution {execution.id} already finished with status '{execution.status}'.",
            )
        return Response(ExecutionSerializer(execution).data)

    @extend_schema(
        request=None,
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR,
                description='Server-sent events: `status` `{"status"}` on each change of the '
                "execution's status, then `done` (the finished execution). docs/streaming.md.",
            )
        },
    )
    @action(detail=True, methods=["get"], filterset_class=None, pagination_class=None)
    def events(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """Follow an execution (queued, running or finished) until it has finished."""
        execution = self.get_object()  # the caller's access, as for reading it
        return streaming.follow_response(request, execution.id)

    @extend_schema(methods=["GET"], request=None, responses={200: FeedbackSerializer(many=True)})
    @extend_schema(methods=["POST"], request=FeedbackCreateSerializer, responses={201: FeedbackSerializer})
    @raises(feedback.FeedbackRefused)
    @action(detail=True, methods=["get", "post"], filterset_class=None, pagination_class=None)
    def feedback(self, request: Request, pk: str | None = None) -> Response:
        """GET: every feedback entry of the execution, newest first (`current`: the latest of its
        author, the ones that count). POST: add one; an author's new entry supersedes their last."""
        if request.method == "GET":
            execution = self.get_object()
            entries = execution.feedback_entries.all()
            return Response(FeedbackSerializer(entries, many=True).data)
        body = FeedbackCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        execution = self.get_object()
        problems = feedback.corrected_output_problems(execution, data["corrected_output"])
        if problems:
            raise APIError(
                status.HTTP_400_BAD_REQUEST,
                "invalid",
                f"{problems[0]['path']}: {problems[0]['message']}",
                errors=problems,
            )
        entry = feedback.record(execution, user=request.user, channel="api", request=request, **data)
        return Response(FeedbackSerializer(entry).data, status=status.HTTP_201_CREATED)


class BatchJSONParser(LimitedJSONParser):
    """Batches carry up to 10,000 inputs: their own, larger body limit."""

    limit_setting = "DSPEX_BATCH_MAX_BYTES"


class BatchViewSet(ProjectScoped, viewsets.GenericViewSet):
    """Create a batch, follow its progress, stream its results, cancel it."""

    queryset = Batch.objects.all()
    project_path = "program__project"
    serializer_class = BatchSerializer
    parser_classes = [BatchJSONParser, MultiPartParser]
    filterset_class = None

    @staticmethod
    def _represent(batch: Batch) -> dict:
        return BatchSerializer({**vars(batch), **batches.progress(batch)}).data

    @extend_schema(request=BatchCreateSerializer, responses={202: BatchSerializer})
    @raises(ProgramNotRunnable, BudgetExceeded)
    def create(self, request: Request) -> Response:
        body = BatchCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        program = program_to_run(self, request, data["program"])
        inputs = batches.parse_jsonl(data["file"]) if "file" in data else data["inputs"]
        batch = batches.create_batch(
            program,
            inputs,
            data.get("variables"),
            user=request.user,
            concurrency=data.get("concurrency"),
            priority=data["priority"],
            use_cache=data["cache"],
            release_for=releases.chooser(program, data["alias"], user=request.user),
        )
        return Response(self._represent(batch), status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={200: BatchSerializer})
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(self._represent(self.get_object()))

    @extend_schema(responses={(200, "application/x-ndjson"): OpenApiTypes.STR})
    @action(detail=True, methods=["get"])
    def results(self, request: Request, pk: str | None = None) -> StreamingHttpResponse:
        """JSONL, one line per input in input order: index, execution, input, output, status, error."""
        batch = self.get_object()
        # Finished items' results tolerate lag; the batch itself was read from the primary.
        lines = batches.result_lines(batch.id, using=read_alias())
        response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.id}.jsonl"'
        return response

    @extend_schema(request=None, responses={200: BatchSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel every pending and running item; finished ones keep their results."""
        batch = self.get_object()
        batches.cancel(batch)
        return Response(self._represent(batch))


class SessionViewSet(
    ProjectScoped,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Multi-turn sessions with a program (executions.sessions): create, list, read with history,
    delete, and run turns. Creating a session or a turn and deleting one start or end work with
    the program: they need RUN, as `execute` does; reading needs READ."""

    queryset = Session.objects.all()
    project_path = "program__project"
    serializer_class = SessionSerializer
    parser_classes = [LimitedJSONParser]
    filterset_class = SessionFilter
    required_kinds = {"create": RUN, "turns": RUN, "destroy": RUN}

    def get_queryset(self):
        # The program: its project (the permission check) and its History inputs, in the same query.
        qs = super().get_queryset().select_related("program")
        if self.action in ("list", "retrieve"):  # what the bodies show; a turn does not need them
            qs = sessions.with_turn_state(qs)
        # The list shows live sessions; a detail route finds an expired one to say so (404
        # `session_expired`) until the prune task deletes it.
        return qs.filter(expires_at__gt=timezone.now()) if self.action == "list" else qs

    def get_object(self) -> Session:
        session = super().get_object()
        if session.is_expired:
            raise sessions.SessionExpired(
                f"Session {session.id} expired at {session.expires_at.isoformat()}."
            )
        return session

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionSerializer})
    def create(self, request: Request) -> Response:
        body = SessionCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        program = program_to_run(self, request, data["program"])
        session = sessions.create_session(
            program,
            metadata=data["metadata"],
            ttl_s=data.get("ttl_s", settings.DSPEX_SESSION_TTL_S),
            user=request.user,
        )
        session.turns, session.busy = 0, False  # type: ignore[attr-defined]  # what with_turn_state adds
        return Response(SessionSerializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: SessionDetailSerializer})
    @raises(sessions.SessionExpired)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(SessionDetailSerializer(self.get_object()).data)

    @raises(sessions.SessionExpired)
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete the session; its turns stay as executions (`session` null), pruned as any."""
        return super().destroy(request, *args, **kwargs)

    @extend_schema(
        request=TurnSerializer,
        responses={
            (200, "application/json"): ExecutionSerializer,
            (200, "text/event-stream"): streaming.SSE_RESPONSE,
            202: QueuedTurnSerializer,
            402: OpenApiResponse(ExecutionSerializer, description="A spend limit was reached during the run"),
            409: OpenApiResponse(ExecutionSerializer, description="Cancelled while it ran"),
            422: OpenApiResponse(ExecutionSerializer, description="The program failed on this input"),
            502: OpenApiResponse(ExecutionSerializer, description="The provider failed"),
            503: OpenApiResponse(
                ExecutionSerializer, description="Refused for now (breaker, rate limit, bulkhead)"
            ),
        },
    )
    @raises(
        sessions.SessionBusy,
        sessions.SessionExpired,
        ProgramNotRunnable,
        BudgetExceeded,
        QueueUnavailable,
    )
    @action(detail=True, methods=["post"])
    def turns(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """Run the session's next turn: `execute`'s answer (`wait=true`, the default) with
        `session` and `turn`; a History input of the program gets the earlier turns."""
        session = self.get_object()
        body = TurnSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        # The cached runnable program, as `execute` reads it (executions.runner.runnable_program).
        program = runner.runnable_program(session.program_id)
        turn = sessions.prepare_turn(session, program.program, data["input"])
        args = (program, turn.input, data["variables"])
        options = {
            "user": request.user,
            "priority": data["priority"],
            "use_cache": data["cache"],
            "turn": turn,
            "release": releases.for_request(
                program.program, data["alias"], session=session.id, user=request.user, input_data=turn.input
            ),
        }
        try:
            if data["stream"]:  # refusals (busy, expired, limits) raise here, before the stream
                started = runner.start_now(*args, **options)
                return streaming.stream_response(
                    request, started, lambda outcome: execution_data(outcome.execution)
                )
            if data["wait"]:
                return execution_response(runner.run_now(*args, **options))
            execution = runner.create_execution(*args, **options)
        except Session.DoesNotExist:  # deleted while the turn was being prepared
            raise Http404 from None
        unpublished: list[str] = []
        transaction.on_commit(lambda: publish(execution, unpublished))
        if unpublished:
            execution.fail_unpublished(unpublished[0])
            raise QueueUnavailable(unpublished[0])
        return Response(QueuedTurnSerializer(execution).data, status=status.HTTP_202_ACCEPTED)


def program_to_run(view: Any, request: Request, program_id: Any) -> CognitiveProgram:
    """The program a body names to start work on (a batch, a session): one of the caller's
    projects (else the 400 of an id that does not exist), and one their role may run there."""
    program = referenced_row(
        access.visible(CognitiveProgram.objects.all(), request.user),
        program_id,
        path="program",
        code="invalid",
        detail=f"No program {program_id}.",
        problem="no such program",
    )
    view.check_object_permissions(request, program)  # a viewer there may not start work
    return program
