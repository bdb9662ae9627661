"""API representations of datasets, runs, results and schedules."""

from typing import Any

from rest_framework import serializers

from dspex_site.api.serializers import StrictSerializer
from optimization.models import Dataset, OptimizationResult, OptimizationRun, OptimizationSchedule
from optimization.optimizers import OPTIMIZERS
from programs.models import CognitiveProgram
from programs.serializers import ReleaseRefSerializer
from projects.api import ProjectOwned, VisibleRelatedField


class ExampleRowSerializer(serializers.Serializer):
    input = serializers.JSONField()
    output = serializers.JSONField()


class DatasetSerializer(ProjectOwned):
    examples = ExampleRowSerializer(many=True, write_only=True, required=False)
    example_count = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "project",
            "description",
            "examples",
            "example_count",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def get_example_count(self, obj: Dataset) -> int:
        annotated = getattr(obj, "n_examples", None)  # list/detail querysets annotate it: no query per row
        return obj.examples.count() if annotated is None else annotated


class FromExecutionsSerializer(StrictSerializer):
    """`POST /api/v1/datasets/from-executions/` (optimization.from_executions)."""

    name = serializers.CharField(max_length=255)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    program = serializers.UUIDField(help_text="The program whose executions become examples.")
    min_score = serializers.FloatField(
        min_value=0.0,
        max_value=1.0,
        required=False,
        allow_null=True,
        default=None,
        help_text="Only executions whose mean feedback score is at least this "
        "(none: any, with or without feedback).",
    )
    release = ReleaseRefSerializer(
        required=False,
        allow_null=True,
        default=None,
        help_text="Only executions of this release (a version, and a result or null: the plain version).",
    )
    since = serializers.DateTimeField(required=False, allow_null=True, default=None)
    until = serializers.DateTimeField(required=False, allow_null=True, default=None)
    use_corrected_output = serializers.BooleanField(
        default=False,
        help_text="Lay the latest corrected output of the execution's feedback over its output.",
    )
    only_succeeded = serializers.BooleanField(default=True)
    limit = serializers.IntegerField(
        min_value=1,
        max_value=100_000,
        required=False,
        default=100_000,
        help_text="At most this many (the newest).",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["since"] and attrs["until"] and attrs["until"] <= attrs["since"]:
            raise serializers.ValidationError({"until": ["must be after `since`"]})
        return attrs


class SkippedExecutionSerializer(serializers.Serializer):
    execution = serializers.UUIDField()
    reason = serializers.ChoiceField(choices=["no_output", "input_mismatch", "output_mismatch"])
    detail = serializers.CharField()


class FromExecutionsResultSerializer(DatasetSerializer):
    """The dataset, with what went into it."""

    included = serializers.IntegerField(read_only=True, help_text="Executions that became examples")
    corrected = serializers.IntegerField(
        read_only=True, help_text="Of those, examples with a corrected output"
    )
    skipped = serializers.DictField(
        child=serializers.IntegerField(), read_only=True, help_text="Executions left out, by reason"
    )
    skipped_total = serializers.IntegerField(read_only=True)
    skipped_examples = SkippedExecutionSerializer(
        many=True, read_only=True, help_text="The first 20 left out"
    )
    content_hash = serializers.CharField(
        read_only=True, help_text="sha256 of the examples (as a set): the same executions give the same hash"
    )

    class Meta(DatasetSerializer.Meta):
        fields = [
            *DatasetSerializer.Meta.fields,
            "included",
            "corrected",
            "skipped",
            "skipped_total",
            "skipped_examples",
            "content_hash",
        ]


class ImportSerializer(StrictSerializer):
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)
    content = serializers.CharField(required=False, trim_whitespace=False, help_text="The file's text.")
    file = serializers.FileField(required=False)
    outputs = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="CSV output columns."
    )
    replace = serializers.BooleanField(default=False)


class OptimizeSerializer(StrictSerializer):
    optimizer = serializers.ChoiceField(choices=OPTIMIZERS)
    dataset = serializers.UUIDField()
    metric = serializers.JSONField(help_text='A metric name or {"name": ..., options}.')
    config = serializers.JSONField(required=False, default=dict)
    split = serializers.JSONField(required=False, default=dict)
    apply = serializers.BooleanField(default=False)
    time_limit_s = serializers.IntegerField(required=False, min_value=1, max_value=4 * 3600)
    cost_budget_usd = serializers.FloatField(required=False, min_value=0)


class RunSerializer(serializers.ModelSerializer):
    class Meta:
        model = OptimizationRun
        fields = [
            "id",
            "program",
            "program_version",
            "dataset",
            "optimizer",
            "metric",
            "config",
            "split",
            "apply",
            "canary",
            "time_limit_s",
            "cost_budget_usd",
            "status",
            "progress",
            "message",
            "error",
            "result",
            "schedule",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class ResultSerializer(serializers.ModelSerializer):
    class Meta:
        model = OptimizationResult
        fields = [
            "id",
            "program",
            "program_version",
            "optimizer_type",
            "parameters",
            "variables",
            "performance_metrics",
            "training_data_hash",
            "created_at",
        ]
        read_only_fields = fields


class RollbackSerializer(StrictSerializer):
    result = serializers.UUIDField(
        allow_null=True, help_text="An earlier result of this program, or null for none."
    )


class RollbackResponseSerializer(serializers.Serializer):
    """What `rollback` answers: the program and the result it now runs with (null: none)."""

    program = serializers.UUIDField()
    active_result = serializers.UUIDField(allow_null=True)


class ScheduleSerializer(serializers.ModelSerializer):
    # Only the caller's projects: another project's program or dataset is "does not exist".
    program = VisibleRelatedField(queryset=CognitiveProgram.objects.all())
    dataset = VisibleRelatedField(
        queryset=Dataset.objects.all(),
        allow_null=True,
        required=False,
        help_text="The examples; null when `from_executions` builds them at each tick.",
    )
    from_executions = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Build each tick's dataset from the program's executions (docs/releases.md, "
        '"The loop"): {"window_s": seconds or null, "min_score": 0..1 or null, '
        '"use_corrected_output": bool, "only_succeeded": bool, "limit": n, '
        '"release": {"version": n, "optimization_result": id or null} or null}.',
    )
    canary = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="Start a canary of a result that beats the baseline instead of applying it: "
        '{"percent": 0 < p < 100, "sticky_by": "session"|"user"|"input", "promote_when": {...}, '
        '"abort_when": {...}} as in POST /programs/{id}/canary/ (without `candidate`).',
    )

    class Meta:
        model = OptimizationSchedule
        fields = [
            "id",
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
            "last_fired_at",
            "last_message",
            "created_at",
        ]
        read_only_fields = ["created_at", "last_fired_at", "last_message"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        from optimization import runner, schedules

        # A PATCH carries only the changed fields: check the schedule they would make.
        def value(name: str, default: Any = None) -> Any:
            return attrs[name] if name in attrs else getattr(self.instance, name, default)

        try:
            rules, canary = schedules.check_schedule(
                value("program"),
                value("dataset"),
                value("from_executions"),
                value("optimizer"),
                value("metric"),
                value("config") or {},
                value("split") or {},
                bool(value("apply", False)),
                value("canary"),
                value("cron", ""),
                value("interval_s"),
            )
        except runner.RunRequestError as exc:
            raise serializers.ValidationError({e["path"]: [e["message"]] for e in exc.errors}) from exc
        if "from_executions" in attrs:
            attrs["from_executions"] = rules
        if "canary" in attrs:
            attrs["canary"] = canary
        return attrs
