"""Optimization: datasets, runs (long background jobs) and their results (DSPy state per program version)."""

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from dspex_site.jobs import Job, JobQuerySet
from projects.models import api_key_reference, default_project_id


class Dataset(models.Model):
    """Labelled examples a program is optimized and scored on. Examples are imported whole or not at all."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, help_text="Unique in its project")
    project = models.ForeignKey(
        "projects.Project",
        on_delete=models.PROTECT,
        related_name="datasets",
        default=default_project_id,
        help_text='The project it belongs to (README, "Projects").',
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "optimization_datasets"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["name", "project"], name="uniq_dataset_name_per_project")
        ]

    def __str__(self) -> str:
        return self.name


class Example(models.Model):
    """One labelled example: `input` holds the program's input fields, `output` the expected outputs."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="examples")
    position = models.PositiveIntegerField(help_text="Order within the dataset (import order).")
    input = models.JSONField()
    output = models.JSONField()

    class Meta:
        db_table = "optimization_examples"
        ordering = ["dataset", "position"]
        constraints = [models.UniqueConstraint(fields=["dataset", "position"], name="uniq_example_position")]

    def __str__(self) -> str:
        return f"{self.dataset_id}#{self.position}"

    def as_row(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output}


class OptimizationResult(models.Model):
    """Optimized parameters for a program: `parameters` is the compiled program's DSPy state JSON.

    `variables` holds variable values found by the variable search (empty for DSPy optimizers):
    they are not DSPy state, so they live beside it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="optimization_results"
    )
    program_version = models.PositiveIntegerField()
    optimizer_type = models.CharField(max_length=50)
    parameters = models.JSONField()
    variables = models.JSONField(default=dict, blank=True)
    performance_metrics = models.JSONField(default=dict)
    training_data_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "optimization_results"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["program", "-created_at"], name="idx_optresults_program_created")]

    def __str__(self) -> str:
        return f"{self.optimizer_type} for {self.program_id} v{self.program_version}"

    @property
    def baseline_score(self) -> float | None:
        return self.performance_metrics.get("baseline_score")

    @property
    def optimized_score(self) -> float | None:
        return self.performance_metrics.get("optimized_score")

    @property
    def beats_baseline(self) -> bool:
        base, best = self.baseline_score, self.optimized_score
        return base is not None and best is not None and best > base

    def history_entry(self) -> dict[str, Any]:
        """What the program's `optimization_history` keeps about this result."""
        metrics = self.performance_metrics
        return {
            "result": str(self.id),
            "optimizer_type": self.optimizer_type,
            "program_version": self.program_version,
            "baseline_score": metrics.get("baseline_score"),
            "optimized_score": metrics.get("optimized_score"),
            "training_data_hash": self.training_data_hash,
            "created_at": self.created_at.isoformat() if self.created_at else None,
        }


class OptimizationRun(Job):
    """One optimization job: a program version, a dataset split, an optimizer and a metric.

    A job (dspex_site.jobs), fenced by its attempt number: `started_at` is the first attempt's
    start (the time limit covers every attempt), so it cannot tell claims apart. `progress` is
    rewritten by the worker at every heartbeat; a run whose heartbeat stops is released by the
    reaper (`optimization.reap_stale`) or taken over by another worker's claim, which replays the
    finished LM calls from the LLM cache.
    """

    FENCE = "attempts"
    TASK = "optimization.run"
    NOUN = "optimization run"

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        SKIPPED = "skipped"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.SKIPPED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="optimization_runs"
    )
    program_version = models.PositiveIntegerField()
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="runs")
    optimizer = models.CharField(max_length=50)
    metric = models.JSONField(help_text='A metric name, or {"name": ..., options}.')
    config = models.JSONField(default=dict, blank=True)
    split = models.JSONField(default=dict, blank=True, help_text="dev_fraction, seed, max_train, max_dev")
    apply = models.BooleanField(default=False, help_text="Apply the result if it beats the baseline.")
    canary = models.JSONField(
        null=True,
        blank=True,
        help_text="Start a canary of the result if it beats the baseline, instead of applying it: "
        "percent, sticky_by, promote_when, abort_when (docs/releases.md).",
    )
    time_limit_s = models.PositiveIntegerField(default=4 * 3600)
    cost_budget_usd = models.FloatField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    progress = models.JSONField(default=dict, blank=True)
    message = models.TextField(blank=True, help_text="Why the run stopped, was skipped or failed.")
    error = models.JSONField(null=True, blank=True)
    result = models.ForeignKey(
        OptimizationResult, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs"
    )
    schedule = models.ForeignKey(
        "optimization.OptimizationSchedule",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
    )
    max_attempts = models.PositiveIntegerField(default=3)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    api_key = api_key_reference("The API key the request came with: the run checks it again when it starts")
    created_at = models.DateTimeField(default=timezone.now)

    objects = JobQuerySet.as_manager()

    class Meta:
        db_table = "optimization_runs"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["program", "-created_at"], name="idx_optruns_program_created"),
            # The reaper's query: running rows by heartbeat age.
            models.Index(fields=["status", "heartbeat_at"], name="idx_optruns_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.optimizer} on {self.program_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @classmethod
    def sync_program_status(cls, program_id: uuid.UUID) -> None:
        """An active program reads `optimizing` while one of its runs is in progress (running, or
        released for another attempt after its worker died), and `active` again once none is.
        Drafts and archived programs keep their status; each direction is one conditional UPDATE."""
        from programs.models import CognitiveProgram

        in_progress = cls.objects.filter(program_id=models.OuterRef("id")).filter(
            Q(status=cls.Status.RUNNING) | Q(status=cls.Status.PENDING, attempts__gt=0)
        )
        programs = CognitiveProgram.objects.filter(id=program_id)
        Status = CognitiveProgram.Status
        programs.filter(status=Status.ACTIVE).filter(models.Exists(in_progress)).update(
            status=Status.OPTIMIZING
        )
        programs.filter(status=Status.OPTIMIZING).exclude(models.Exists(in_progress)).update(
            status=Status.ACTIVE
        )

    # --- job hooks (dspex_site.jobs) ------------------------------------------------------------
    @classmethod
    def claimable(cls, now: datetime) -> Q:
        """Pending, or running with a heartbeat older than DSPEX_OPTIMIZATION_STALE_S (its worker
        died: taken over without waiting for the reaper), while attempts remain."""
        stale = now - timedelta(seconds=cls.stale_after_s())
        runnable = Q(status=cls.Status.PENDING) | Q(status=cls.Status.RUNNING, heartbeat_at__lt=stale)
        return runnable & Q(attempts__lt=models.F("max_attempts"))

    @classmethod
    def claim_values(cls, now: datetime) -> dict[str, Any]:
        # The first attempt's start stays: the run's time limit covers all its attempts.
        return {**super().claim_values(now), "started_at": Coalesce("started_at", now)}

    @classmethod
    def heartbeat_every_s(cls) -> float:
        return settings.DSPEX_OPTIMIZATION_HEARTBEAT_S

    @classmethod
    def stale_after_s(cls) -> float:
        return settings.DSPEX_OPTIMIZATION_STALE_S

    def attempt_limit(self) -> int:
        return self.max_attempts

    def release(self, error: dict) -> bool:
        # Back to pending: the next claim is then decided by the row, not by each worker's own
        # idea of "stale". The program keeps reading `optimizing` (a released run is in progress).
        return self.fenced_update(status=self.Status.PENDING, worker="")

    def give_up(self, error: dict) -> bool:
        given_up = self.fenced_update(
            status=self.Status.FAILED,
            finished_at=timezone.now(),
            message=f"Worker lost on attempt {self.attempts} of {self.max_attempts}; giving up.",
            error=error,
        )
        OptimizationRun.sync_program_status(self.program_id)
        return given_up

    def beat(self, progress: dict[str, Any]) -> bool:
        """Write progress; False when the run is no longer this attempt's (cancelled or taken over)."""
        return self.fenced_update(progress=progress)

    def finish(self, status: str, **fields: Any) -> bool:
        """Record the outcome of this attempt; only the attempt that holds the run can finish it."""
        updated = self.fenced_update(status=status, finished_at=timezone.now(), **fields)
        self.refresh_from_db()
        return updated

    def cancel(self) -> bool:
        """Cancel unless finished. A running run notices at its next heartbeat and stops."""
        updated = OptimizationRun.objects.filter(
            id=self.id, status__in=[self.Status.PENDING, self.Status.RUNNING]
        ).update(status=self.Status.CANCELLED, finished_at=timezone.now(), message="Cancelled by request.")
        self.refresh_from_db()
        OptimizationRun.sync_program_status(self.program_id)
        return updated == 1


class OptimizationSchedule(models.Model):
    """A recurring optimization (django-celery-beat `PeriodicTask`, cron or interval).

    Each tick creates an OptimizationRun with these settings; the run is skipped when the program
    version and the training data are unchanged since this schedule's last result.

    The unattended loop (docs/releases.md, "The loop"): with `from_executions` each tick builds
    its dataset from the program's production executions (optimization.from_executions) instead
    of using `dataset`; with `canary` a result that beats the baseline starts a canary of itself
    rather than being applied, and the canary's rules promote or abort it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200, unique=True)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="optimization_schedules"
    )
    dataset = models.ForeignKey(
        Dataset,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="schedules",
        help_text="The examples; empty when `from_executions` builds them at each tick.",
    )
    from_executions = models.JSONField(
        null=True,
        blank=True,
        help_text="Build each tick's dataset from executions: window_s, min_score, "
        "use_corrected_output, only_succeeded, limit, release {version, optimization_result}.",
    )
    optimizer = models.CharField(max_length=50)
    metric = models.JSONField()
    config = models.JSONField(default=dict, blank=True)
    split = models.JSONField(default=dict, blank=True)
    apply = models.BooleanField(default=False)
    canary = models.JSONField(
        null=True,
        blank=True,
        help_text="Start a canary of a result that beats the baseline instead of applying it: "
        "percent, sticky_by, promote_when, abort_when.",
    )
    cron = models.CharField(max_length=100, blank=True, help_text='Five fields, e.g. "0 3 * * *".')
    interval_s = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_fired_at = models.DateTimeField(null=True, blank=True)
    last_message = models.TextField(blank=True, help_text="What the last tick did, or why it did nothing.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "optimization_schedules"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
