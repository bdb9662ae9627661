"""Cognitive programs: DSPy pipelines stored as JSON, versioned on every change."""

import uuid
from typing import Any

from django.conf import settings
from django.db import models, transaction

from programs.spec import SpecError, validate_program


class CognitiveProgram(models.Model):
    """A DSPy program described by a pipeline spec (see DESIGN.md "Pipeline spec").

    `version` is bumped whenever `pipeline` or `variables` change; each version is kept as a
    `ProgramVersion` so executions can say exactly what they ran and operators can roll back.
    """

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        OPTIMIZING = "optimizing"
        ARCHIVED = "archived"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, unique=True)
    description = models.TextField(blank=True)
    pipeline = models.JSONField()
    variables = models.JSONField(default=dict, blank=True)
    optimization_history = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    version = models.PositiveIntegerField(default=1, editable=False)
    active_result = models.ForeignKey(
        "optimization.OptimizationResult",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Optimized parameters (DSPy state) executions run with; empty runs the plain program.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "cognitive_programs"
        ordering = ["name"]
        indexes = [models.Index(fields=["status"], name="idx_programs_status")]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, bumping `version` and snapshotting it when pipeline or variables changed.

        The current row is locked while comparing, so two concurrent edits cannot both
        become the same version number.
        """
        with transaction.atomic():
            if self._state.adding:
                super().save(*args, **kwargs)
                self._snapshot()
                return
            current = (
                CognitiveProgram.objects.select_for_update()
                .filter(pk=self.pk)
                .values("pipeline", "variables", "version")
                .first()
            )
            changed = current is None or (current["pipeline"], current["variables"]) != (
                self.pipeline,
                self.variables,
            )
            if current is not None and changed:
                self.version = current["version"] + 1
                if kwargs.get("update_fields") is not None:
                    kwargs["update_fields"] = {*kwargs["update_fields"], "version", "updated_at"}
            super().save(*args, **kwargs)
            if changed:
                self._snapshot()

    def _snapshot(self) -> None:
        ProgramVersion.objects.create(
            program=self, version=self.version, pipeline=self.pipeline, variables=self.variables
        )

    def spec_errors(self) -> list[SpecError]:
        return validate_program(self.pipeline, self.variables)

    @property
    def is_runnable(self) -> bool:
        return self.status != self.Status.ARCHIVED

    def version_spec(self, version: int) -> "ProgramVersion":
        return self.versions.get(version=version)


class ProgramVersion(models.Model):
    """An immutable snapshot of a program's pipeline and variables at one version."""

    program = models.ForeignKey(CognitiveProgram, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    pipeline = models.JSONField()
    variables = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        db_table = "program_versions"
        ordering = ["program", "-version"]
        constraints = [models.UniqueConstraint(fields=["program", "version"], name="uniq_program_version")]

    def __str__(self) -> str:
        return f"{self.program_id} v{self.version}"
