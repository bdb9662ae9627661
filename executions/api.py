"""REST API for executions: list, detail, cancel."""

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api_errors import APIError
from executions.filters import ExecutionFilter
from executions.models import CognitiveExecution
from executions.serializers import ExecutionSerializer, ExecutionSummarySerializer


class ExecutionViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = CognitiveExecution.objects.all()
    filterset_class = ExecutionFilter

    def get_queryset(self):
        qs = super().get_queryset()
        # The trace can be megabytes: list pages never load it.
        return qs.defer("trace") if self.action == "list" else qs

    def get_serializer_class(self) -> type:
        return ExecutionSummarySerializer if self.action == "list" else ExecutionSerializer

    @extend_schema(request=None, responses={200: ExecutionSerializer})
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
