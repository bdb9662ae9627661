"""Executions: one run of one program version on one input, with its full trace."""

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, models
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
            heartbeat_at=now,
            worker=worker_name()[:200],
            attempts=models.F("attempts") + 1,
        )
        return now if won == 1 else None

    def claim_row(self, execution_id: uuid.UUID) -> "CognitiveExecution | None":
        """`claim()` for the worker: the claimed row and its program's name come back from the
        same statement (UPDATE … RETURNING), saving the read that would follow; None if another
        caller won or the execution is no longer pending."""
        from programs.models import CognitiveProgram

        now = timezone.now()
        quote = connections[self.db].ops.quote_name
        table, programs = quote(self.model._meta.db_table), quote(CognitiveProgram._meta.db_table)
        # Identifiers come from model metadata, quoted; every value is a parameter.
        sql = (
            f"WITH claimed AS (UPDATE {table} SET status = %s, started_at = %s, heartbeat_at = %s, "  # noqa: S608
            "worker = %s, attempts = attempts + 1 WHERE id = %s AND status = %s RETURNING *) "
            f"SELECT claimed.*, p.name AS program_name FROM claimed JOIN {programs} p "
            "ON p.id = claimed.program_id"
        )
        params = [
            CognitiveExecution.Status.RUNNING,
            now,
            now,
            worker_name()[:200],
            execution_id,
            CognitiveExecution.Status.PENDING,
        ]
        # A RawQuerySet runs its statement once per iteration: iterate exactly once.
        rows = list(self.model.objects.raw(sql, params).using(self.db))
        return rows[0] if rows else None

    def heartbeat(self, ids: list) -> int:
        """Say the executions this process runs are alive (the reaper re-queues silent ones)."""
        if not ids:
            return 0
        return self.filter(id__in=ids, status=CognitiveExecution.Status.RUNNING).update(
            heartbeat_at=timezone.now()
        )


def worker_name() -> str:
    """Which process holds an execution: host and pid (operators read it; nothing parses it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
    # Background runs: `queued_at` is when the last task message was published (null: a batch
    # item not dispatched yet); `heartbeat_at`/`worker` let the reaper tell a live run from one
    # whose worker died; `errors` keeps every failed attempt, `error` only the final one.
    queued_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    errors = models.JSONField(default=list, blank=True, help_text="Every failed attempt, oldest first.")
    batch_index = models.PositiveIntegerField(null=True, blank=True)

    objects = ExecutionQuerySet.as_manager()

    class Meta:
        db_table = "cognitive_executions"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["program", "status"], name="idx_executions_program_status"),
            models.Index(fields=["-created_at"], name="idx_executions_created_at"),
            models.Index(fields=["status", "started_at"], name="idx_executions_status_started"),
            models.Index(fields=["batch", "batch_index"], name="idx_executions_batch_index"),
            # Hourly usage rollups (monitoring.rollups) read executions by finish time.
            models.Index(fields=["finished_at"], name="idx_executions_finished_at"),
            # The console's "last execution" / "last 24 h" columns per program.
            models.Index(fields=["program", "-created_at"], name="idx_executions_program_created"),
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

    def _mine(self) -> models.QuerySet:
        """This run's row, fenced by its claim: `started_at` is unique per claim, so a worker the
        reaper gave up on can never overwrite the run that replaced it."""
        running = CognitiveExecution.objects.filter(id=self.id, status=self.Status.RUNNING)
        return running.filter(started_at=self.started_at)

    def finish(self, status: str, *, output: Any = None, error: dict | None = None, **fields: Any) -> None:
        """Record the outcome of a run; only the run holding the claim can finish it."""
        now = timezone.now()
        values = {"status": status, "output": output, "error": error, "finished_at": now, **fields}
        if error is not None:
            values["errors"] = [*self.errors, self._stamped(error)]
        if self._mine().update(**values):
            for key, value in values.items():
                setattr(self, key, value)
        else:
            self.refresh_from_db()

    def requeue_after_failure(
        self, error: dict, delay_s: float, *, spend_attempt: bool, **fields: Any
    ) -> bool:
        """Put a failed run back to `pending` to be retried in `delay_s` (the caller enqueues it).

        A rate-limited attempt gives its attempt back: the provider refused it, it never ran.
        """
        now = timezone.now()
        values = {
            "status": self.Status.PENDING,
            "errors": [*self.errors, self._stamped(error, retry_in_s=round(delay_s, 3))],
            "queued_at": now + timedelta(seconds=delay_s),
            "heartbeat_at": None,
            **fields,
        }
        if not spend_attempt:
            values["attempts"] = models.F("attempts") - 1
        if not self._mine().update(**values):
            self.refresh_from_db()
            return False
        self.refresh_from_db()
        return True

    def fail_unpublished(self, message: str) -> bool:
        """The task could not be published (broker down): fail the row rather than leave it
        pending with nothing to run it; the client was told 503 and may submit again."""
        error = {"type": "queue_unavailable", "message": message}
        updated = CognitiveExecution.objects.filter(id=self.id, status=self.Status.PENDING).update(
            status=self.Status.FAILED, error=error, errors=[self._stamped(error)], finished_at=timezone.now()
        )
        self.refresh_from_db()
        return updated == 1

    @staticmethod
    def _stamped(error: dict, **extra: Any) -> dict:
        return {**error, "at": timezone.now().isoformat(), **extra}

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
    """Many inputs for one program, run as one execution each, at most `concurrency` at a time.

    Items are `pending` executions ordered by `batch_index`; only the ones dispatched (with a
    `queued_at`) have a task message. Each finished item dispatches the next (executions.batches).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey("programs.CognitiveProgram", on_delete=models.CASCADE, related_name="batches")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    concurrency = models.PositiveIntegerField(default=20)
    priority = models.CharField(max_length=10, default="normal")

    class Meta:
        db_table = "execution_batches"
        ordering = ["-created_at"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return str(self.id)
