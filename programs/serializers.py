"""API representations of programs."""

from typing import Any

from rest_framework import serializers

from dspex_site.api.serializers import StrictSerializer
from programs.models import CognitiveProgram
from programs.spec import ProgramSpecError, program_input_fields, program_output_fields, validate_program
from projects.api import ProjectOwned


class ProgramSerializer(ProjectOwned):
    """A program. Pipeline and variables are validated as a whole; errors carry JSON paths."""

    input_fields = serializers.SerializerMethodField()
    output_fields = serializers.SerializerMethodField()
    pipeline = serializers.JSONField()
    variables = serializers.JSONField(required=False)

    class Meta:
        model = CognitiveProgram
        fields = [
            "id",
            "name",
            "project",
            "description",
            "pipeline",
            "variables",
            "status",
            "version",
            "active_result",
            "optimization_history",
            "input_fields",
            "output_fields",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["version", "active_result", "optimization_history", "created_at", "updated_at"]

    def get_input_fields(self, obj: CognitiveProgram) -> dict[str, str]:
        try:
            return program_input_fields(obj.pipeline)
        except Exception:  # an old invalid row must still be listable
            return {}

    def get_output_fields(self, obj: CognitiveProgram) -> list[str]:
        try:
            return program_output_fields(obj.pipeline)
        except Exception:
            return []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)  # the name, unique in its project (ProjectOwned)
        instance = self.instance
        pipeline = attrs.get("pipeline", instance.pipeline if instance else None)
        variables = attrs.get("variables", instance.variables if instance else {})
        if variables is None:
            variables = attrs["variables"] = {}
        errors = validate_program(pipeline, variables)
        if errors:
            raise ProgramSpecError(errors)
        if "status" in attrs:
            problem = (instance or CognitiveProgram()).status_change_error(attrs["status"])
            if problem:
                raise serializers.ValidationError({"status": [problem]})
        return attrs


class ExecuteSerializer(StrictSerializer):
    """Body of POST /programs/{id}/execute/."""

    input = serializers.JSONField(help_text='The program\'s input fields, e.g. {"question": "..."}.')
    variables = serializers.JSONField(required=False, default=dict, help_text="Variable overrides.")
    wait = serializers.BooleanField(default=False, help_text="Run in the request and return the result.")
    priority = serializers.ChoiceField(choices=["normal", "high"], default="normal")
    cache = serializers.BooleanField(default=True, help_text="Use the LLM response cache.")
    alias = serializers.CharField(
        required=False,
        default="",
        allow_blank=True,
        max_length=64,
        help_text="Run this alias's release (docs/releases.md); empty: the current release "
        "(or, during a canary, the arm this caller is on).",
    )
    stream = serializers.BooleanField(
        default=False,
        help_text="Run in the request and answer `text/event-stream`: `token`, `step`, then `done` "
        "(the finished execution) or `error` (docs/streaming.md).",
    )


class AliasSetSerializer(StrictSerializer):
    """Body of PUT /programs/{id}/aliases/{name}/."""

    version = serializers.IntegerField(min_value=1)
    optimization_result = serializers.UUIDField(allow_null=True, required=False, default=None)


class AliasSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    optimization_result = serializers.UUIDField(source="optimization_result_id", allow_null=True)
    updated_at = serializers.DateTimeField()


class ReleaseRefSerializer(StrictSerializer):
    version = serializers.IntegerField(min_value=1)
    optimization_result = serializers.UUIDField(allow_null=True, required=False, default=None)


class CanaryStartSerializer(StrictSerializer):
    """Body of POST /programs/{id}/canary/."""

    candidate = ReleaseRefSerializer()
    percent = serializers.FloatField(help_text="Share of default traffic on the candidate, 0 < p < 100.")
    sticky_by = serializers.ChoiceField(choices=["session", "user", "input"], default="session")
    promote_when = serializers.JSONField(required=False, default=None)
    abort_when = serializers.JSONField(required=False, default=None)


class CanarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    percent = serializers.FloatField()
    sticky_by = serializers.CharField()
    control = serializers.SerializerMethodField()
    candidate = serializers.SerializerMethodField()
    promote_when = serializers.JSONField()
    abort_when = serializers.JSONField()
    outcome = serializers.CharField()
    decisions = serializers.JSONField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    figures = serializers.SerializerMethodField()

    def get_control(self, obj: Any) -> dict[str, Any]:
        return _ref(obj.control_version, obj.control_result_id)

    def get_candidate(self, obj: Any) -> dict[str, Any]:
        return _ref(obj.candidate_version, obj.candidate_result_id)

    def get_figures(self, obj: Any) -> dict[str, Any]:
        from programs import releases

        return releases.report(obj)


def _ref(version: int, result: Any) -> dict[str, Any]:
    return {"version": version, "optimization_result": None if result is None else str(result)}
