"""Executions: one run of one program version on one input, with its full trace."""

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class ExecutionQuerySet(models.QuerySet):
    def claim(self, execution_id: uuid.UUID) -> datetime | None:
        """Move a pending execution to running; the start time only for the one caller that won.

        A conditional UPDATE rather than read-then-write, so a redelivered task or a second
        worker can never run the same execution twice at the same time.
        """
        now = timezone.now()
        won = self.filter(id=execution_id, status=CognitiveExecution.Status.PENDING).update(
            status=CognitiveExecution.Status.RUNNING,
            started_at=now,
            attempts=models.F("attempts") + 1,
        )
        return now if won == 1 else None


class CognitiveExecution(models.Model):
    """One execution of a program. `trace` lists module and LM-call entries (DESIGN.md)."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Priority(models.TextChoices):
        NORMAL = "normal"
        HIGH = "high"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="executions"
    )
    program_version = models.PositiveIntegerField()
    optimization_result = models.ForeignKey(
        "optimization.OptimizationResult", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    input = models.JSONField()
    variables = models.JSONField(default=dict, blank=True, help_text="Variable values the run used.")
    output = models.JSONField(null=True, blank=True)
    trace = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    use_cache = models.BooleanField(default=True)
    batch = models.ForeignKey(
        "executions.Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="executions"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        db_table = "cognitive_executions"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["program", "status"], name="idx_executions_program_status"),
            models.Index(fields=["-created_at"], name="idx_executions_created_at"),
            models.Index(fields=["status", "started_at"], name="idx_executions_status_started"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def refresh_claimed(self, started_at: datetime) -> None:
        """Mirror what `claim()` wrote, without reading the row back."""
        self.status = self.Status.RUNNING
        self.attempts += 1
        self.started_at = started_at

    def finish(self, status: str, *, output: Any = None, error: dict | None = None, **fields: Any) -> None:
        """Record the outcome of a run; only a running execution can be finished."""
        now = timezone.now()
        values = {"status": status, "output": output, "error": error, "finished_at": now, **fields}
        updated = CognitiveExecution.objects.filter(id=self.id, status=self.Status.RUNNING).update(**values)
        if updated:
            for key, value in values.items():
                setattr(self, key, value)
        else:
            self.refresh_from_db()

    def cancel(self) -> bool:
        """Cancel unless already finished. A running execution stops at its next LM call."""
        updated = CognitiveExecution.objects.filter(
            id=self.id, status__in=[self.Status.PENDING, self.Status.RUNNING]
        ).update(
            status=self.Status.CANCELLED,
            finished_at=timezone.now(),
            error={"type": "cancelled", "message": "Cancelled by request."},
        )
        self.refresh_from_db()
        return updated == 1


class Batch(models.Model):
    """Many inputs for one program, run as one execution each."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey("programs.CognitiveProgram", on_delete=models.CASCADE, related_name="batches")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "execution_batches"
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return str(self.id)
