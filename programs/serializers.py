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
    stream = serializers.BooleanField(
        default=False,
        help_text="Run in the request and answer `text/event-stream`: `token`, `step`, then `done` "
        "(the finished execution) or `error` (docs/streaming.md).",
    )
