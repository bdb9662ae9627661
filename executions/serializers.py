"""API representations of executions."""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from dspex_site.api.serializers import StrictSerializer
from executions import sessions
from executions.models import CognitiveExecution, Feedback, Session

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
    "errors",
    "batch_index",
    "session",
    "turn",
    "alias",
    "canary",
    "arm",
    "feedback",
]


class FeedbackSummarySerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Current feedback entries (the latest of each author)")
    score = serializers.FloatField(
        allow_null=True, help_text="Mean score of those entries (null: none scored)"
    )


@extend_schema_field(FeedbackSummarySerializer)
class FeedbackSummaryField(serializers.ReadOnlyField):
    """The execution's `feedback` summary (`CognitiveExecution.feedback`), read from its own
    columns (no other table)."""


class ExecutionSummarySerializer(serializers.ModelSerializer):
    """An execution without its trace (list pages stay small and fast)."""

    feedback = FeedbackSummaryField()

    class Meta:
        model = CognitiveExecution
        fields = SUMMARY_FIELDS
        read_only_fields = SUMMARY_FIELDS


class ExecutionSerializer(serializers.ModelSerializer):
    """An execution with its full trace.

    Its representation is `execution_data` (the fields' values without building a
    ModelSerializer's fields for every answer, which costs more than the rest of a cached
    execution); the fields declared here are what the schema documents, and a test checks that
    both give the same answer.
    """

    feedback = FeedbackSummaryField()

    class Meta:
        model = CognitiveExecution
        fields = [*SUMMARY_FIELDS[:9], "trace", *SUMMARY_FIELDS[9:]]
        read_only_fields = fields

    def to_representation(self, instance: CognitiveExecution) -> dict[str, Any]:
        return execution_data(instance)


_datetime = serializers.DateTimeField()
# Foreign keys: the API shows their ids.
_KEYS = {
    "program": "program_id",
    "optimization_result": "optimization_result_id",
    "batch": "batch_id",
    "session": "session_id",
    "canary": "canary_id",
}
_DATETIMES = ("created_at", "started_at", "finished_at")


def execution_data(execution: CognitiveExecution) -> dict[str, Any]:
    """`ExecutionSerializer`'s representation of an execution (with its trace), field for field."""
    data: dict[str, Any] = {}
    for name in ExecutionSerializer.Meta.fields:
        if name == "feedback":  # the execution's own columns: no query
            data[name] = execution.feedback
            continue
        value = getattr(execution, _KEYS.get(name, name))
        if value is None:
            data[name] = None
        elif name in _KEYS or name == "id":
            data[name] = str(value)
        elif name in _DATETIMES:
            data[name] = _datetime.to_representation(value)
        else:
            data[name] = value
    return data


class QueuedExecutionSerializer(serializers.Serializer):
    """The 202 answer to a queued execute. Declared fields, not a ModelSerializer: it is on the
    hottest path there is, and building a ModelSerializer's fields costs more than the rest."""

    id = serializers.UUIDField(read_only=True)
    status = serializers.ChoiceField(choices=CognitiveExecution.Status.choices, read_only=True)
    program = serializers.UUIDField(source="program_id", read_only=True)
    program_version = serializers.IntegerField(read_only=True)
    priority = serializers.ChoiceField(choices=CognitiveExecution.Priority.choices, read_only=True)
    created_at = serializers.DateTimeField(read_only=True)


class BatchCreateSerializer(serializers.Serializer):
    """`inputs` as a JSON list, or `file` as a JSONL upload (multipart)."""

    program = serializers.UUIDField()
    inputs = serializers.JSONField(required=False, help_text="A list of input objects.")
    file = serializers.FileField(required=False, help_text="JSONL: one input object per line.")
    variables = serializers.JSONField(required=False, default=dict)
    concurrency = serializers.IntegerField(required=False, min_value=1, max_value=500)
    priority = serializers.ChoiceField(choices=["normal", "high"], default="normal")
    cache = serializers.BooleanField(default=True)
    alias = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=64, help_text="Run this alias's release."
    )

    def validate(self, attrs: dict) -> dict:
        if ("inputs" in attrs) == ("file" in attrs):
            raise serializers.ValidationError({"inputs": ["give either `inputs` (a list) or `file` (JSONL)"]})
        if not isinstance(attrs.get("variables") or {}, dict):
            raise serializers.ValidationError({"variables": ["must be an object of variable overrides"]})
        return attrs


class BatchSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    program = serializers.UUIDField(source="program_id")
    total = serializers.IntegerField()
    concurrency = serializers.IntegerField()
    priority = serializers.CharField()
    created_at = serializers.DateTimeField()
    cancelled_at = serializers.DateTimeField(allow_null=True)
    status = serializers.CharField(help_text="running, finished or cancelled")
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="executions by status")
    finished = serializers.IntegerField()
    progress = serializers.FloatField(help_text="finished / total, 0..1")


# --- sessions -------------------------------------------------------------------------------


class SessionCreateSerializer(StrictSerializer):
    """Body of POST /sessions/."""

    program = serializers.UUIDField()
    metadata = serializers.JSONField(
        required=False, default=dict, help_text="Anything of the client's (an object)."
    )
    ttl_s = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="Seconds without a turn after which the session expires (default DSPEX_SESSION_TTL_S, "
        "at most DSPEX_SESSION_MAX_TTL_S).",
    )

    def validate_metadata(self, value: Any) -> dict:
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object")
        return value

    def validate_ttl_s(self, value: int) -> int:
        if value > settings.DSPEX_SESSION_MAX_TTL_S:
            raise serializers.ValidationError(
                f"at most {settings.DSPEX_SESSION_MAX_TTL_S} seconds (DSPEX_SESSION_MAX_TTL_S)"
            )
        return value


class TurnSerializer(StrictSerializer):
    """Body of POST /sessions/{id}/turns/: `execute`'s, except that `wait` defaults to true."""

    input = serializers.JSONField(
        help_text="The program's inputs except its History ones (the session fills those)."
    )
    variables = serializers.JSONField(required=False, default=dict, help_text="Variable overrides.")
    wait = serializers.BooleanField(
        default=True, help_text="Run in the request (200) or queue the turn (202)."
    )
    priority = serializers.ChoiceField(choices=["normal", "high"], default="normal")
    cache = serializers.BooleanField(default=True, help_text="Use the LLM response cache.")
    alias = serializers.CharField(
        required=False, default="", allow_blank=True, max_length=64, help_text="Run this alias's release."
    )
    stream = serializers.BooleanField(
        default=False,
        help_text="Run in the request and answer `text/event-stream`, as `execute` does (docs/streaming.md).",
    )


class SessionSerializer(serializers.ModelSerializer):
    """A session; `turns` is its last succeeded turn (0 before the first), `busy` whether a turn
    is pending or running (both read from its executions, executions.sessions)."""

    turns = serializers.IntegerField(read_only=True)
    busy = serializers.BooleanField(read_only=True)

    class Meta:
        model = Session
        fields = ["id", "program", "turns", "busy", "metadata", "ttl_s", "created_at", "expires_at"]
        read_only_fields = fields


class HistoryTurnSerializer(serializers.Serializer):
    turn = serializers.IntegerField()
    input = serializers.JSONField(help_text="As the client sent it (without the History fields).")
    output = serializers.JSONField()
    execution = serializers.UUIDField()


class SessionDetailSerializer(SessionSerializer):
    history = serializers.SerializerMethodField()

    class Meta(SessionSerializer.Meta):
        fields = [*SessionSerializer.Meta.fields, "history"]
        read_only_fields = fields

    @extend_schema_field(HistoryTurnSerializer(many=True))
    def get_history(self, obj: Session) -> list[dict[str, Any]]:
        return sessions.history(obj)


class QueuedTurnSerializer(QueuedExecutionSerializer):
    """The 202 answer to a queued turn."""

    session = serializers.UUIDField(source="session_id", read_only=True)
    turn = serializers.IntegerField(read_only=True)


class FeedbackCreateSerializer(StrictSerializer):
    """`POST /api/v1/executions/{id}/feedback/`; `corrected_output` is checked against the output
    fields of the program version the execution ran (executions.feedback)."""

    score = serializers.FloatField(
        min_value=0.0, max_value=1.0, allow_null=True, required=False, default=None
    )
    # A declared field named `label` (the metaclass moves it out of the class attributes).
    label = serializers.CharField(  # type: ignore[assignment]
        max_length=100, required=False, allow_blank=True, default=""
    )
    corrected_output = serializers.JSONField(required=False, allow_null=True, default=None)
    comment = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict) -> dict:
        if (
            attrs["score"] is None
            and not attrs["label"]
            and attrs["corrected_output"] is None
            and not attrs["comment"]
        ):
            raise serializers.ValidationError(
                {"score": ["give at least one of score, label, corrected_output, comment"]}
            )
        return attrs


class FeedbackSerializer(serializers.ModelSerializer):
    execution = serializers.UUIDField(source="execution_id", read_only=True)
    author = serializers.SerializerMethodField()

    class Meta:
        model = Feedback
        fields = [
            "id",
            "execution",
            "author",
            "channel",
            "score",
            "label",
            "corrected_output",
            "comment",
            "current",
            "created_at",
        ]
        read_only_fields = fields

    def get_author(self, obj: Feedback) -> str | None:
        return obj.author_name or None
