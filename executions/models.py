"""Executions: one run of one program version on one input, with its full trace."""

import functools
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict, cast

from django.conf import settings
from django.db import connections, models
from django.utils import timezone

from dspex_site.celery import Queue
from dspex_site.jobs import Job, JobQuerySet
from projects.models import api_key_reference

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations


class _ProgramName(TypedDict):
    """The column `claim_row` reads alongside the claimed row."""

    program_name: str


class ExecutionQuerySet(JobQuerySet["CognitiveExecution"]):
    def insert(self, execution: "CognitiveExecution") -> None:
        """`execution.save(force_insert=True)` as one prepared-once INSERT: the synchronous hot
        path stores every execution this way, and building the ORM's INSERT for 25 columns cost
        more than sending it. Values are converted by each field, as the ORM would; executions
        have no save signals or auto-now fields for `save()` to run."""
        db = self.db
        connection = connections[db]
        fields = self.model._meta.concrete_fields
        params = [field.get_db_prep_save(getattr(execution, field.attname), connection) for field in fields]
        with connection.cursor() as cursor:
            cursor.execute(_insert_sql(db), params)
        execution._state.adding, execution._state.db = False, db

    def claim_row(self, execution_id: uuid.UUID | str) -> "ClaimedExecution | None":
        """`claim()` for the worker: the claimed row and its program's name come back from the
        same statement (the claim's UPDATE … RETURNING in a CTE), saving the read that would
        follow; None if another caller won or the execution is no longer pending."""
        from programs.models import CognitiveProgram

        if connections[self.db].vendor != "postgresql":
            return self._claim_then_read(execution_id)
        claim, params = self.claim_statement(execution_id)
        programs = connections[self.db].ops.quote_name(CognitiveProgram._meta.db_table)
        sql = (
            f"WITH claimed AS ({claim}) SELECT claimed.*, p.name AS program_name "  # noqa: S608
            f"FROM claimed JOIN {programs} p ON p.id = claimed.program_id"
        )
        connection = connections[self.db]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            values = cursor.fetchone()
            if values is None:
                return None
            columns = tuple(column.name for column in cursor.description)
        # Decoded as the ORM decodes a row (JSON columns and all), without a RawQuerySet: this is
        # the worker's hot path, and the raw queryset's per-query setup cost more than the claim.
        order, decoders, name_at = _row_decoder(self.db, columns)
        decoded = [decode(values[i]) for i, decode in zip(order, decoders, strict=True)]
        row = self.model.from_db(self.db, [f.attname for f in self.model._meta.concrete_fields], decoded)
        row.program_name = values[name_at]  # type: ignore[attr-defined]  # the CTE's extra column
        row.hold(row.started_at)
        return cast("ClaimedExecution", row)

    def _claim_then_read(self, execution_id: uuid.UUID | str) -> "ClaimedExecution | None":
        """The same claim in two statements, for SQLite (the embedded mode of `make run`), which
        has no UPDATE … RETURNING inside a CTE."""
        token = self.claim(execution_id)
        if token is None:
            return None
        row = self.select_related("program").get(pk=execution_id)
        row.hold(token)
        row.program_name = row.program.name  # type: ignore[attr-defined]  # what the CTE's column gives
        return cast("ClaimedExecution", row)


@functools.cache
def _insert_sql(db: str) -> str:
    quote = connections[db].ops.quote_name
    fields = CognitiveExecution._meta.concrete_fields
    columns = ", ".join(quote(field.column) for field in fields)
    # Identifiers come from model metadata, quoted; every value is a parameter.
    return (
        f"INSERT INTO {quote(CognitiveExecution._meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )


@functools.cache
def _row_decoder(db: str, columns: tuple[str, ...]) -> tuple[list[int], list[Callable[[Any], Any]], int]:
    """How to read a `claimed.*, program_name` row: for each concrete field of the model in order,
    the index of its column and a function applying the converters the ORM would apply."""
    connection = connections[db]
    model = CognitiveExecution
    order: list[int] = []
    decoders: list[Callable[[Any], Any]] = []
    for field in model._meta.concrete_fields:
        order.append(columns.index(field.column))
        column = field.get_col(model._meta.db_table)
        converters = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        decoders.append(functools.partial(_convert, converters, column, connection))
    return order, decoders, columns.index("program_name")


def _convert(converters: list, expression: Any, connection: Any, value: Any) -> Any:
    for converter in converters:
        value = converter(value, expression, connection)
    return value


class CognitiveExecution(Job):
    """One execution of a program. `trace` lists module and LM-call entries (docs/architecture.md).

    A job (dspex_site.jobs): claimed by one worker, every later write fenced by its claim's
    `started_at`, kept alive by the process heartbeat, recovered by `executions.reap`.
    """

    TASK = "executions.run"
    NOUN = "execution"

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
    # Foreign keys without an index of their own: every claim and finish rewrites each index of
    # this table, so none is kept twice. `program` and `batch` are the first columns of the
    # composite indexes below; `optimization_result` and `created_by` (null on most rows) have
    # partial indexes of their non-null values (what deleting a result or a user looks up).
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="executions", db_index=False
    )
    program_version = models.PositiveIntegerField()
    optimization_result = models.ForeignKey(
        "optimization.OptimizationResult",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    input = models.JSONField()
    variables = models.JSONField(default=dict, blank=True, help_text="Variable values the run used.")
    output = models.JSONField(null=True, blank=True)
    trace = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    error = models.JSONField(null=True, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    use_cache = models.BooleanField(default=True)
    batch = models.ForeignKey(
        "executions.Batch",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="executions",
        db_index=False,
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    api_key = api_key_reference(
        "The API key the request came with: work it queued checks it again when it runs"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Background runs: `queued_at` is when the last task message was published (null: a batch
    # item not dispatched yet); `errors` keeps every failed attempt, `error` only the final one.
    # `attempts`, `worker`, `heartbeat_at`, `started_at`, `finished_at` come from Job.
    queued_at = models.DateTimeField(null=True, blank=True)
    errors = models.JSONField(default=list, blank=True, help_text="Every failed attempt, oldest first.")
    batch_index = models.PositiveIntegerField(null=True, blank=True)
    # A session's turn (executions.sessions): which session, and the turn's number in it.
    session = models.ForeignKey(
        "executions.Session",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="executions",
        db_index=False,
    )
    turn = models.PositiveIntegerField(null=True, blank=True)
    # Feedback summary (executions.feedback keeps it): how many people's current feedback the
    # execution has and the mean of their scores, so lists, filters and answers read no other table.
    feedback_count = models.PositiveIntegerField(default=0)
    feedback_score = models.FloatField(null=True, blank=True)
    # The release the execution ran (docs/releases.md): `program_version` and
    # `optimization_result` above are it; `alias` names it when the request chose one, and during
    # a canary of the program's default traffic `canary` and `arm` say which side it was on.
    alias = models.CharField(max_length=64, blank=True, default="")
    canary = models.ForeignKey(
        "programs.Canary", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=False
    )
    arm = models.CharField(max_length=10, null=True, blank=True)  # noqa: DJ001 - null: not in a canary (the API says null)

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
            models.Index(
                fields=["optimization_result"],
                name="idx_executions_result",
                condition=models.Q(optimization_result__isnull=False),
            ),
            models.Index(
                fields=["created_by"],
                name="idx_executions_created_by",
                condition=models.Q(created_by__isnull=False),
            ),
            # A session's turns (its history, whether one is running); only turns have an entry.
            models.Index(
                fields=["session", "turn"],
                name="idx_executions_session_turn",
                condition=models.Q(session__isnull=False),
            ),
            # A canary's executions per arm (its figures); only canary executions have an entry.
            models.Index(
                fields=["canary", "arm"],
                name="idx_executions_canary_arm",
                condition=models.Q(canary__isnull=False),
            ),
            # `?has_feedback=true`: the few executions with feedback, newest first. Partial, so
            # inserts and finishes (feedback_count 0) never write it.
            models.Index(
                fields=["-created_at"],
                name="idx_executions_feedback",
                condition=models.Q(feedback_count__gt=0),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def feedback(self) -> dict[str, Any]:
        """The API's `feedback`: current entries (the latest of each author) and their mean score."""
        return {"count": self.feedback_count, "score": self.feedback_score}

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    def refresh_claimed(self, started_at: datetime) -> None:
        """Mirror what `claim()` wrote, without reading the row back."""
        self.status = self.Status.RUNNING
        self.attempts += 1
        self.started_at = started_at
        self.hold(started_at)

    # --- job hooks (dspex_site.jobs) ------------------------------------------------------------
    @classmethod
    def heartbeat_every_s(cls) -> float:
        return settings.DSPEX_HEARTBEAT_S

    @classmethod
    def stale_after_s(cls) -> float:
        return settings.DSPEX_HEARTBEAT_STALE_S

    @classmethod
    def overdue_after_s(cls) -> float:
        return settings.DSPEX_EXECUTION_TIME_LIMIT_S + 60

    def overdue_message(self) -> str:
        return f"The execution ran longer than its {settings.DSPEX_EXECUTION_TIME_LIMIT_S} s time limit."

    def attempt_limit(self) -> int:
        return settings.DSPEX_MAX_ATTEMPTS

    def queue_name(self) -> str:
        return Queue.PRIORITY if self.priority == self.Priority.HIGH else Queue.LLM_CALLS

    def release(self, error: dict) -> bool:
        return self.requeue_after_failure(error, 0, spend_attempt=True)

    def give_up(self, error: dict) -> bool:
        self.finish(self.Status.FAILED, error=error)
        return self.status == self.Status.FAILED

    def finish(self, status: str, *, output: Any = None, error: dict | None = None, **fields: Any) -> None:
        """Record the outcome of a run; only the run holding the claim can finish it."""
        now = timezone.now()
        values = {"status": status, "output": output, "error": error, "finished_at": now, **fields}
        if error is not None:
            values["errors"] = [*self.errors, self._stamped(error)]
        if self.fenced_update(**values):
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
        if not self.fenced().update(**values):
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
    api_key = api_key_reference(
        "The API key the request came with: work it queued checks it again when it runs"
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


class Session(models.Model):
    """A conversation with one program: its turns are executions (`session`, `turn`), and a
    program input of type History gets the earlier succeeded turns (executions.sessions).

    Nothing about the turns is stored here: the number of turns, the history and whether a turn
    is running are read from the executions, so they can never disagree with them (a turn whose
    process died is recovered by the executions' own reaper, and the session with it).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="sessions"
    )
    metadata = models.JSONField(default=dict, blank=True)
    ttl_s = models.PositiveIntegerField(help_text="Seconds without a turn after which the session expires.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)  # the prune task's lookup

    class Meta:
        db_table = "execution_sessions"
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return str(self.id)

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class Feedback(models.Model):
    """One person's judgement of an execution: a score in [0, 1], a label, a corrected output, a
    comment (README, "Feedback").

    Entries are never rewritten: a second entry by the same author supersedes their earlier one
    (`current` moves to the new row), so each author counts once and the history stays readable.
    """

    class Channel(models.TextChoices):
        API = "api"
        ADMIN = "admin"

    id = models.BigAutoField(primary_key=True)
    execution = models.ForeignKey(
        CognitiveExecution, on_delete=models.CASCADE, related_name="feedback_entries"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    author_name = models.CharField(max_length=150, blank=True, help_text="Kept if the user is deleted.")
    channel = models.CharField(max_length=10, choices=Channel.choices, default=Channel.API)
    score = models.FloatField(null=True, blank=True, help_text="0 (bad) .. 1 (good), or none")
    label = models.CharField(max_length=100, blank=True)
    corrected_output = models.JSONField(null=True, blank=True, help_text="What the output should have been.")
    comment = models.TextField(blank=True)
    current = models.BooleanField(default=True, help_text="The author's latest entry for this execution.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "execution_feedback"
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "feedback"
        indexes = [models.Index(fields=["execution", "-created_at"], name="idx_feedback_execution")]
        constraints = [
            models.UniqueConstraint(
                fields=["execution", "author"],
                condition=models.Q(current=True),
                name="uniq_feedback_current_per_author",
            ),
            models.CheckConstraint(
                condition=models.Q(score__isnull=True) | models.Q(score__gte=0, score__lte=1),
                name="feedback_score_in_unit_interval",
            ),
        ]

    def __str__(self) -> str:
        return f"feedback {self.pk} on {self.execution_id}"


class IngestedMessage(models.Model):
    """The idempotency key of an execution started by a message of the AMQP consumer
    (`manage.py dspex_consume`, executions.ingestion): stored in the transaction that stores the
    execution, so a redelivered message (the same `message_id`) finds its execution instead of
    starting a second one. Deleted with its execution (pruning)."""

    message_id = models.CharField(max_length=200, primary_key=True)
    execution = models.OneToOneField(CognitiveExecution, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "ingested_messages"

    def __str__(self) -> str:
        return f"message {self.message_id} -> {self.execution_id}"


if TYPE_CHECKING:
    # An execution `claim_row` returned: the row with its program's name.
    ClaimedExecution = WithAnnotations[CognitiveExecution, _ProgramName]
