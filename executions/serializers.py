"""API representations of executions."""

from rest_framework import serializers

from executions.models import CognitiveExecution

SUMMARY_FIELDS = [
    "id",
    "program",
    "program_version",
    "optimization_result",
    "status",
    "input",
    "variables",
    "output",
    "error",
    "metrics",
    "duration_ms",
    "attempts",
    "priority",
    "batch",
    "created_at",
    "started_at",
    "finished_at",
]


class ExecutionSummarySerializer(serializers.ModelSerializer):
    """An execution without its trace (list pages stay small and fast)."""

    class Meta:
        model = CognitiveExecution
        fields = SUMMARY_FIELDS
        read_only_fields = SUMMARY_FIELDS


class ExecutionSerializer(serializers.ModelSerializer):
    """An execution with its full trace."""

    class Meta:
        model = CognitiveExecution
        fields = [*SUMMARY_FIELDS[:9], "trace", *SUMMARY_FIELDS[9:]]
        read_only_fields = fields


class QueuedExecutionSerializer(serializers.ModelSerializer):
    class Meta:
        model = CognitiveExecution
        fields = ["id", "status", "program", "program_version", "priority", "created_at"]
        read_only_fields = fields
