"""REST API for executions (list, detail, cancel) and batches (create, progress, results, cancel)."""

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api.errors import APIError
from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.api.schema import raises
from dspex_site.api.serializers import referenced_row
from dspex_site.roles import RUN
from executions import batches, feedback
from executions.filters import ExecutionFilter
from executions.models import Batch, CognitiveExecution
from executions.runner import ProgramNotRunnable
from executions.serializers import (
    BatchCreateSerializer,
    BatchSerializer,
    ExecutionSerializer,
    ExecutionSummarySerializer,
    FeedbackCreateSerializer,
    FeedbackSerializer,
)
from llm.budgets import BudgetExceeded
from programs.models import CognitiveProgram
from projects import access
from projects.api import ProjectScoped


class ExecutionViewSet(ProjectScoped, viewsets.ReadOnlyModelViewSet):
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
        program = referenced_row(
            access.visible(CognitiveProgram.objects.all(), request.user),
            data["program"],
            path="program",
            code="invalid",
            detail=f"No program {data['program']}.",
            problem="no such program",
        )
        self.check_object_permissions(request, program)  # a viewer there may not start work
        inputs = batches.parse_jsonl(data["file"]) if "file" in data else data["inputs"]
        batch = batches.create_batch(
            program,
            inputs,
            data.get("variables"),
            user=request.user,
            concurrency=data.get("concurrency"),
            priority=data["priority"],
            use_cache=data["cache"],
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
        response = StreamingHttpResponse(batches.result_lines(batch.id), content_type="application/x-ndjson")
        response["Content-Disposition"] = f'attachment; filename="batch-{batch.id}.jsonl"'
        return response

    @extend_schema(request=None, responses={200: BatchSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel every pending and running item; finished ones keep their results."""
        batch = self.get_object()
        batches.cancel(batch)
        return Response(self._represent(batch))
