"""REST API: datasets (+ import), optimize, runs (+ cancel), results (+ apply), rollback, schedules."""

import django_filters
from django.db import transaction
from django.db.models import Count
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from dspex_site.api.errors import APIError
from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.api.schema import raises
from dspex_site.api.serializers import referenced_row
from dspex_site.errors import decode_text
from monitoring import audit
from optimization import datasets, dspy_state, from_executions, results, runner, schedules
from optimization.models import Dataset, OptimizationResult, OptimizationRun, OptimizationSchedule
from optimization.serializers import (
    DatasetSerializer,
    FromExecutionsResultSerializer,
    FromExecutionsSerializer,
    ImportSerializer,
    OptimizeSerializer,
    ResultSerializer,
    RollbackResponseSerializer,
    RollbackSerializer,
    RunSerializer,
    ScheduleSerializer,
)
from programs import releases
from programs.models import CognitiveProgram
from projects import access
from projects.api import ProjectScoped


class RunFilter(django_filters.FilterSet):
    # Plain id filters: another project's program filters to nothing, exactly as an unknown id.
    program = django_filters.UUIDFilter(field_name="program_id")

    class Meta:
        model = OptimizationRun
        fields = ["program", "status", "optimizer"]


class ResultFilter(django_filters.FilterSet):
    program = django_filters.UUIDFilter(field_name="program_id")

    class Meta:
        model = OptimizationResult
        fields = ["program", "optimizer_type"]


class DatasetViewSet(
    ProjectScoped,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Dataset.objects.annotate(n_examples=Count("examples"))
    serializer_class = DatasetSerializer
    parser_classes = [LimitedJSONParser]

    def perform_create(self, serializer: "BaseSerializer[Dataset]") -> None:
        rows = serializer.validated_data.pop("examples", [])
        with transaction.atomic():
            dataset = serializer.save()
            if rows:
                datasets.import_rows(dataset, [dict(r) for r in rows])  # DatasetError: rolled back
            audit.record(
                "create", dataset, channel="api", request=self.request, changes={"examples": len(rows)}
            )

    @extend_schema(request=ImportSerializer, responses={200: DatasetSerializer})
    @action(
        detail=True,
        methods=["post"],
        url_path="import",
        parser_classes=[LimitedJSONParser, MultiPartParser, FormParser],
    )
    def import_examples(self, request: Request, pk: str | None = None) -> Response:
        """Import JSONL or CSV (a `file` upload or `content` text); all rows or none, with per-row errors."""
        dataset = self.get_object()
        body = ImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        upload = data.get("file")
        text = decode_text(upload.read(), path="file") if upload else data.get("content", "")
        fmt = data.get("format") or ("csv" if upload and upload.name.lower().endswith(".csv") else "jsonl")
        rows = datasets.parse(text, fmt, data.get("outputs"))
        count = datasets.import_rows(dataset, rows, replace=data["replace"])
        audit.record(
            "import", dataset, channel="api", request=request, changes={"rows": count, "format": fmt}
        )
        dataset = self.get_queryset().get(id=dataset.id)
        return Response({**DatasetSerializer(dataset).data, "imported": count})

    @extend_schema(request=FromExecutionsSerializer, responses={201: FromExecutionsResultSerializer})
    @raises(from_executions.NoExamples, from_executions.NameTaken, releases.ReleaseInvalid)
    @action(detail=False, methods=["post"], url_path="from-executions")
    def from_executions(self, request: Request) -> Response:
        """A dataset of a program's executions (README, "Datasets from executions"): all rows or
        nothing; the answer counts what was included and what was skipped, and why."""
        body = FromExecutionsSerializer(data=request.data)
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
        # Writing a dataset in the program's project: the caller's role there must allow edits.
        self.check_object_permissions(request, program)
        release = data["release"]
        if release is not None:  # ReleaseInvalid: 400 naming release.version / .optimization_result
            releases.load_release(
                program, release["version"], release["optimization_result"], path="release.version"
            )
        criteria = from_executions.Criteria(
            program=program,
            release=None if release is None else (release["version"], release["optimization_result"]),
            min_score=data["min_score"],
            since=data["since"],
            until=data["until"],
            use_corrected_output=data["use_corrected_output"],
            only_succeeded=data["only_succeeded"],
            limit=data["limit"],
        )

        def audited(dataset: Dataset, built: from_executions.Build) -> None:
            changes = {"from_executions": criteria.as_dict(), **built.report()}
            changes.pop("skipped_examples")
            audit.record("create", dataset, channel="api", request=request, changes=changes)

        dataset, built = from_executions.create_dataset(
            criteria, name=data["name"], description=data["description"], audit_record=audited
        )
        dataset = self.get_queryset().get(id=dataset.id)
        return Response({**DatasetSerializer(dataset).data, **built.report()}, status=status.HTTP_201_CREATED)


class OptimizeView(APIView):
    """POST /api/v1/programs/{id}/optimize/ → 202 with the queued run."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(request=OptimizeSerializer, responses={202: RunSerializer})
    def post(self, request: Request, pk: str) -> Response:
        program = get_object_or_404(access.visible(CognitiveProgram.objects.all(), request.user), pk=pk)
        self.check_object_permissions(request, program)
        body = OptimizeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        dataset = referenced_row(
            Dataset.objects.filter(project_id=program.project_id),  # the program's project only
            data["dataset"],
            path="dataset",
            code="unknown_dataset",
            detail=f"No dataset {data['dataset']}.",
            problem="no such dataset",
        )
        with transaction.atomic():
            run = runner.create_run(
                program,
                dataset,
                data["optimizer"],
                data["metric"],
                config=data["config"],
                split=data["split"],
                apply=data["apply"],
                time_limit_s=data.get("time_limit_s"),
                cost_budget_usd=data.get("cost_budget_usd"),
                user=request.user,
            )
            audit.record("optimize", program, channel="api", request=request, changes={"run": str(run.id)})
            transaction.on_commit(run.publish)
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class RollbackView(APIView):
    """POST /api/v1/programs/{id}/rollback/ {"result": id | null}: one action back to a result or to none."""

    parser_classes = [LimitedJSONParser]

    @extend_schema(request=RollbackSerializer, responses={200: RollbackResponseSerializer})
    @raises(results.ResultDoesNotFit)
    def post(self, request: Request, pk: str) -> Response:
        program = get_object_or_404(access.visible(CognitiveProgram.objects.all(), request.user), pk=pk)
        self.check_object_permissions(request, program)
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = None
        if body.validated_data["result"] is not None:
            result = referenced_row(
                OptimizationResult.objects.filter(program=program),
                body.validated_data["result"],
                path="result",
                code="unknown_result",
                detail="Not a result of this program.",
                problem="not a result of this program",
            )
        results.set_active(program, result, channel="api", request=request)
        return Response({"program": str(program.id), "active_result": str(result.id) if result else None})


class RunViewSet(ProjectScoped, viewsets.ReadOnlyModelViewSet):
    queryset = OptimizationRun.objects.all()
    project_path = "program__project"
    serializer_class = RunSerializer
    filterset_class = RunFilter

    @extend_schema(request=None, responses={200: RunSerializer})
    @raises((409, "Already finished (`already_finished`)."))
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel a pending or running run; a running one stops within seconds. A finished one answers 409."""
        run = self.get_object()
        if not run.cancel():
            raise APIError(
                status.HTTP_409_CONFLICT,
                "already_finished",
                f"Run {run.id} already finished with status '{run.status}'.",
            )
        audit.record("cancel", run, channel="api", request=request)
        return Response(RunSerializer(run).data)


class ResultViewSet(ProjectScoped, viewsets.ReadOnlyModelViewSet):
    queryset = OptimizationResult.objects.all()
    project_path = "program__project"
    serializer_class = ResultSerializer
    filterset_class = ResultFilter

    @extend_schema(request=None, responses={200: ResultSerializer})
    @raises(results.ResultDoesNotFit)
    @action(detail=True, methods=["post"])
    def apply(self, request: Request, pk: str | None = None) -> Response:
        """Make this result the program's active parameters."""
        result = self.get_object()
        results.set_active(result.program, result, channel="api", request=request)
        return Response(ResultSerializer(result).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, methods=["get"], url_path="dspy-state")
    def dspy_state(self, request: Request, pk: str | None = None) -> Response:
        """The result as the JSON file plain DSPy's `module.load(path)` reads (docs/dspy.md)."""
        result = self.get_object()
        response = Response(dspy_state.export_state(result))
        response["Content-Disposition"] = f'attachment; filename="dspex-result-{result.id}.json"'
        return response


class ScheduleViewSet(ProjectScoped, viewsets.ModelViewSet):
    queryset = OptimizationSchedule.objects.all()
    project_path = "program__project"
    serializer_class = ScheduleSerializer
    parser_classes = [LimitedJSONParser]

    def perform_create(self, serializer: "BaseSerializer[OptimizationSchedule]") -> None:
        self.check_object_permissions(self.request, serializer.validated_data["program"])
        with transaction.atomic():
            schedule = serializer.save()
            schedules.sync_periodic_task(schedule)

    def perform_update(self, serializer: "BaseSerializer[OptimizationSchedule]") -> None:
        if "program" in serializer.validated_data:  # moved to another program: edit rights there too
            self.check_object_permissions(self.request, serializer.validated_data["program"])
        with transaction.atomic():
            schedules.sync_periodic_task(serializer.save())

    def perform_destroy(self, instance: OptimizationSchedule) -> None:
        with transaction.atomic():
            if instance.periodic_task is not None:
                instance.periodic_task.delete()
            instance.delete()
