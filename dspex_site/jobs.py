"""One job lifecycle for every background row: executions and optimization runs.

A job row moves `pending` → `running` → finished. What keeps that safe with many workers, at-least-once
delivery and workers that die (docs/architecture.md, "The job lifecycle"):

- **claim**: one conditional UPDATE (`pending` → `running`, `attempts + 1`, `worker`, `heartbeat_at`);
  only one caller can win, so a redelivered or duplicate message never runs a job twice.
- **fence**: every later write of the run is conditional on the claim's token (the model's
  `FENCE` field as the claim wrote it), so a worker the reaper gave up on can never overwrite the
  run that replaced it.
- **heartbeat**: one daemon thread per process refreshes `heartbeat_at` of every row the process
  holds, one UPDATE per model per interval, and tells a holder when its row is no longer its own.
- **reaper**: rows whose heartbeat went stale lost their worker: back to `pending` and published
  again, or failed once their attempts are spent (`worker_lost`); rows running past their time
  limit fail (`time_limit_exceeded`).
- **worker identity**: `worker_name()`, host and pid.

A model opts in by subclassing `Job` (fields and fenced writes) with a `JobQuerySet` manager and
overriding the few hooks that differ (its claimable rows, its attempt limit, how it is published).
"""

import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from django.db import close_old_connections, connection, connections, models, router
from django.db.models import Q
from django.utils import timezone

from dspex_site.celery import publish
from dspex_site.db import release

logger = logging.getLogger(__name__)

PENDING, RUNNING, FAILED = "pending", "running", "failed"


def worker_name() -> str:
    """Which process holds a job: host and pid (operators read it; nothing parses it)."""
    return f"{socket.gethostname()}:{os.getpid()}"[:200]


_JobT = TypeVar("_JobT", bound="Job")


class JobQuerySet(models.QuerySet[_JobT]):
    def claim(self, pk: Any) -> Any:
        """Move a claimable row to `running` for this process; the claim's fence token for the one
        caller that won, None for every other. A conditional UPDATE rather than read-then-write."""
        model = self.model
        now = timezone.now()
        values = model.claim_values(now)
        won = self.filter(model.claimable(now), pk=pk).update(**values)
        if won != 1:
            return None
        token = values.get(model.FENCE)
        if token is None or hasattr(token, "resolve_expression"):
            # The token is computed by the database (e.g. `attempts + 1`): read it back. A takeover
            # needs a stale heartbeat, so nobody can have changed it in between.
            token = self.filter(pk=pk).values_list(model.FENCE, flat=True).first()
        return token

    def claim_statement(self, pk: Any) -> tuple[str, list[Any]]:
        """The plain claim (`pending` → `running`) as one `UPDATE … RETURNING *` statement with its
        parameters, for a caller that reads the claimed row in the same round trip (a CTE).

        Built from the same `claim_values` as `claim()`; only models whose claim writes plain values
        (plus `attempts + 1`) can use it. The statement's text is built once per model and
        database: this is the worker's hot path."""
        values = self.model.claim_values(timezone.now())
        values.pop("attempts")
        for name, value in values.items():
            if hasattr(value, "resolve_expression"):
                raise TypeError(f"{self.model.__name__}.claim_values: {name} is an expression")
        sql = _claim_sql(self.model, self.db, tuple(values))
        return sql, [*values.values(), pk, PENDING]

    def stale(self, stale_after_s: float, now: datetime | None = None) -> Self:
        """Running rows whose heartbeat is older than `stale_after_s`: their worker is gone."""
        cutoff = (now or timezone.now()) - timedelta(seconds=stale_after_s)
        return self.filter(status=RUNNING, heartbeat_at__lt=cutoff)

    def heartbeat(self, held: Iterable["Job"]) -> int:
        """Say these held rows are alive, in one UPDATE; each only while its claim still holds."""
        fence = self.model.FENCE
        held_q = Q()
        for job in held:
            held_q |= Q(pk=job.pk, **{fence: job.claim_token})
        if not held_q:
            return 0
        return self.filter(held_q, status=RUNNING).update(heartbeat_at=timezone.now())


if TYPE_CHECKING:
    # The manager type of every job model (`JobQuerySet.as_manager()` or a subclass's), for `Job.objects`.
    JobManager = models.Manager.from_queryset(JobQuerySet)


@functools.cache
def _claim_sql(model: type["Job"], db: str, names: tuple[str, ...]) -> str:
    quote = connections[db].ops.quote_name
    column = {name: quote(_column(model, name)) for name in (*names, "attempts", "status")}
    assignments = [f"{column[name]} = %s" for name in names]
    assignments.append(f"{column['attempts']} = {column['attempts']} + 1")
    table, pk_column = quote(model._meta.db_table), quote(model._meta.pk.column)
    # Identifiers come from model metadata, quoted; every value is a parameter.
    return (
        f"UPDATE {table} SET {', '.join(assignments)} "  # noqa: S608
        f"WHERE {pk_column} = %s AND {column['status']} = %s RETURNING *"
    )


@functools.cache
def _fenced_update_sql(model: type["Job"], db: str, names: tuple[str, ...]) -> str:
    quote = connections[db].ops.quote_name
    assignments = ", ".join(f"{quote(_column(model, name))} = %s" for name in names)
    table, pk_column = quote(model._meta.db_table), quote(model._meta.pk.column)
    status, fence = quote(_column(model, "status")), quote(_column(model, model.FENCE))
    # Identifiers come from model metadata, quoted; every value is a parameter.
    return (
        f"UPDATE {table} SET {assignments} "  # noqa: S608
        f"WHERE {pk_column} = %s AND {status} = %s AND {fence} = %s"
    )


def _field(model: type["Job"], name: str) -> models.Field:
    """One of the model's concrete fields (`pk`: its primary key); claims write plain columns."""
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    if not isinstance(field, models.Field) or field.column is None:
        raise TypeError(f"{model.__name__}.{name} is not a concrete field")
    return field


def _db_value(field: models.Field, value: Any, conn: Any) -> Any:
    """`value` as the queryset's `update()` would send it to `field`'s column (a row given for a
    foreign key is sent as its key)."""
    if isinstance(field, models.ForeignKey) and isinstance(value, models.Model):
        value = getattr(value, field.target_field.attname)
    return field.get_db_prep_save(value, conn)


def _column(model: type["Job"], name: str) -> str:
    """The database column of one of the model's concrete fields."""
    return _field(model, name).column


class Job(models.Model):
    """Abstract: the lifecycle fields and fenced writes shared by every background job row.

    Subclasses keep their own `status` field (their choices differ) with at least `pending`,
    `running` and `failed`, and set `TASK` (the Celery task that runs one row).
    """

    # The field whose value identifies one claim (fences every later write of that run).
    FENCE: ClassVar[str] = "started_at"
    TASK: ClassVar[str] = ""
    # What operators call one row, in messages ("the worker running this execution ...").
    NOUN: ClassVar[str] = "job"
    # Error type recorded when the reaper finds a row whose worker stopped heartbeating.
    LOST = "worker_lost"

    attempts = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    if TYPE_CHECKING:
        # Declared for the checker only: every concrete job model sets its own JobQuerySet manager
        # (the reaper and the heartbeat take any job model and use it).
        objects: "JobManager[Self]"

    class Meta:
        abstract = True

    # --- claiming ---------------------------------------------------------------------------------
    @classmethod
    def claimable(cls, now: datetime) -> Q:
        """Rows a worker may claim now."""
        return Q(status=PENDING)

    @classmethod
    def claim_values(cls, now: datetime) -> dict[str, Any]:
        """What a claim writes."""
        return {
            "status": RUNNING,
            "started_at": now,
            "heartbeat_at": now,
            "worker": worker_name(),
            "attempts": models.F("attempts") + 1,
        }

    @property
    def claim_token(self) -> Any:
        """This run's claim: the token it was claimed with (`hold`), else the row's as loaded."""
        return self.__dict__.get("_claim_token", getattr(self, self.FENCE))

    def hold(self, token: Any) -> None:
        """Remember the claim this instance runs under (reloading the row never changes it)."""
        self.__dict__["_claim_token"] = token

    def fence_also(self, **conditions: Any) -> None:
        """Narrow this instance's fence further (the reaper: only while the heartbeat is still stale)."""
        self.__dict__["_fence_also"] = conditions

    def fenced(self) -> models.QuerySet:
        """This run's row, only while it is running under this run's claim (and, for the reaper,
        only while its heartbeat is still stale)."""
        also = self.__dict__.get("_fence_also", {})
        # The ignores on `status=` lookups here and below: every concrete job model declares `status`
        # (this class's docstring), but the django-stubs plugin checks lookups against abstract Job.
        rows = type(self)._default_manager.filter(pk=self.pk, status=RUNNING, **also)  # type: ignore[misc]
        return rows.filter(**{self.FENCE: self.claim_token})

    def fenced_update(self, **values: Any) -> bool:
        """Write `values` if the claim still holds; False (nothing written) otherwise.

        The same conditional UPDATE as `fenced().update(**values)` (`pk`, `status = running` and
        the claim's token), as one statement whose text is built once per model, database and
        set of columns: a worker writes every run's outcome through here, and building and
        compiling the queryset each time cost more CPU than the statement itself. Expressions
        (`F(...)`) and the reaper's extra conditions take the queryset path."""
        if (
            self.__dict__.get("_fence_also")
            or self.claim_token is None  # `IS NULL`, not `= NULL`: the queryset knows
            or any(hasattr(v, "resolve_expression") for v in values.values())
        ):
            return self.fenced().update(**values) == 1
        model = type(self)
        db = self._state.db or router.db_for_write(model, instance=self)
        conn = connections[db]
        sql = _fenced_update_sql(model, db, tuple(values))
        params = [_db_value(_field(model, name), value, conn) for name, value in values.items()]
        params += [
            _field(model, "pk").get_db_prep_value(self.pk, conn),
            RUNNING,
            _field(model, self.FENCE).get_db_prep_value(self.claim_token, conn),
        ]
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount == 1

    # --- hooks for the heartbeat and the reaper ---------------------------------------------------
    @classmethod
    def heartbeat_every_s(cls) -> float:
        raise NotImplementedError

    @classmethod
    def stale_after_s(cls) -> float:
        raise NotImplementedError

    @classmethod
    def overdue_after_s(cls) -> float | None:
        """Running longer than this fails the row (`time_limit_exceeded`); None: never."""
        return None

    def overdue_message(self) -> str:
        return f"The {self.NOUN} ran longer than its time limit."

    def attempt_limit(self) -> int:
        raise NotImplementedError

    def queue_name(self) -> str | None:
        """The queue to publish this row's task to; None: the task's route."""
        return None

    def publish(self, countdown: float | None = None) -> None:
        """Publish the task that runs this row (raises when the broker is unreachable)."""
        publish(self.TASK, str(self.pk), queue=self.queue_name(), countdown=countdown)

    def release(self, error: dict) -> bool:
        """The reaper found this row's worker gone: back to `pending` for another attempt."""
        raise NotImplementedError

    def give_up(self, error: dict) -> bool:
        """The reaper found this row's worker gone and its attempts spent (or its time up): fail it."""
        raise NotImplementedError

    def lost_error(self, stale_after_s: float) -> dict[str, str]:
        return {
            "type": self.LOST,
            "message": f"The worker running this {self.NOUN} ({self.worker or 'unknown'}) stopped "
            f"responding (no heartbeat for {stale_after_s:.0f} s).",
        }


# --- the reaper -------------------------------------------------------------------------------------
def reap_lost(model: type[Job], now: datetime | None = None) -> int:
    """Running rows of `model` whose worker stopped heartbeating: released and published again
    while attempts remain, failed otherwise. Returns how many were re-queued.

    Each transition is fenced by the row's claim and by its heartbeat still being stale, so a
    worker that comes back, or a replacement that has claimed the row meanwhile, is never undone.
    """
    stale_s = model.stale_after_s()
    cutoff = (now or timezone.now()) - timedelta(seconds=stale_s)
    requeued = 0
    for job in model.objects.stale(stale_s, now):
        job.fence_also(heartbeat_at__lt=cutoff)
        error = job.lost_error(stale_s)
        if job.attempts >= job.attempt_limit():
            job.give_up(error)
            continue
        if not job.release(error):
            continue
        requeued += 1
        try:
            job.publish()
        except Exception:
            # Left pending with no message: the next reap (or the row's own sweep) publishes it.
            logger.warning("reaper could not publish %s %s; it stays pending", model.__name__, job.pk)
    if requeued:
        logger.warning("reaper re-queued %d %s rows whose worker was lost", requeued, model.__name__)
    return requeued


def fail_overdue(model: type[Job], now: datetime | None = None) -> int:
    """Running rows past their time limit (a thread pool cannot enforce one) fail for good: a run
    that ran out of time once would most likely do so again."""
    limit = model.overdue_after_s()
    if limit is None:
        return 0
    cutoff = (now or timezone.now()) - timedelta(seconds=limit)
    failed = 0
    # `status` is each concrete model's; the plugin checks against abstract Job (Job.fenced).
    for job in model.objects.filter(status=RUNNING, started_at__lt=cutoff):  # type: ignore[misc]
        failed += job.give_up({"type": "time_limit_exceeded", "message": job.overdue_message()})
    return failed


# --- the heartbeat ----------------------------------------------------------------------------------
@dataclass(eq=False)
class Holding:
    """One row this process runs. `on_lost` is called (once) when the row is no longer this run's
    (cancelled, reaped, taken over); `on_beat` after each heartbeat that found it still ours."""

    job: Job
    on_lost: Callable[[], None] | None = None
    on_beat: Callable[[], None] | None = None
    lost: bool = field(default=False)


class Heartbeat:
    """Keeps `heartbeat_at` of every job row this process runs fresh.

    One daemon thread per process, started with the first row held; per model one UPDATE for all
    of its rows every `heartbeat_every_s()`. A row whose heartbeat goes stale (its process was
    killed) is recovered by the reaper long before the broker's 5 h visibility timeout would
    bring its message back.
    """

    def __init__(self) -> None:
        self._held: dict[int, Holding] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._due: dict[type[Job], float] = {}

    def hold(
        self,
        job: Job,
        *,
        on_lost: Callable[[], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> Holding:
        holding = Holding(job, on_lost, on_beat)
        with self._lock:
            self._held[id(holding)] = holding
            model = type(job)
            # A new row is beaten within one interval (as the setting says now, which may have
            # changed since this model's last beat was planned).
            due = time.monotonic() + model.heartbeat_every_s()
            if due < self._due.get(model, float("inf")):
                self._due[model] = due
                self._wake.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="dspex-heartbeat", daemon=True)
                self._thread.start()
        return holding

    def release(self, holding: Holding) -> None:
        with self._lock:
            self._held.pop(id(holding), None)

    def held(self, model: type[Job] | None = None) -> list[Holding]:
        with self._lock:
            return [h for h in self._held.values() if model is None or type(h.job) is model]

    def beat(self, model: type[Job]) -> int:
        """One heartbeat for `model`'s rows; how many were refreshed."""
        holdings = [h for h in self.held(model) if not h.lost]
        if not holdings:
            return 0
        refreshed = model.objects.heartbeat(h.job for h in holdings)
        lost: list[Holding] = []
        if refreshed < len(holdings) and any(h.on_lost for h in holdings):
            # Rare: some row is not ours any more. Find which (one read), tell its run.
            still = {
                (pk, token)
                # `status` is each concrete model's; the plugin checks against abstract Job (Job.fenced).
                for pk, token in model.objects.filter(  # type: ignore[misc]
                    pk__in=[h.job.pk for h in holdings], status=RUNNING
                ).values_list("pk", model.FENCE)
            }
            lost = [h for h in holdings if (h.job.pk, h.job.claim_token) not in still]
        for holding in holdings:
            if holding in lost:
                holding.lost = True
                if holding.on_lost is not None:
                    holding.on_lost()
            elif holding.on_beat is not None:
                holding.on_beat()
        return refreshed

    def _loop(self) -> None:
        while True:
            with self._lock:
                due = dict(self._due)
            wait = min(due.values(), default=time.monotonic() + 1.0) - time.monotonic()
            if self._wake.wait(timeout=max(wait, 0.0)):
                self._wake.clear()
                continue
            now = time.monotonic()
            for model, at in due.items():
                if at > now:
                    continue
                with self._lock:
                    self._due[model] = now + model.heartbeat_every_s()
                try:
                    close_old_connections()
                    if not self.beat(model) and not self.held():
                        connection.close()  # idle: hold no database session between runs
                    else:
                        release()  # pooled: back to the pool until the next beat
                except Exception:
                    # The database restarting must not kill the thread: drop the connection, retry.
                    logger.warning("%s heartbeat failed; retrying", model.__name__, exc_info=True)
                    connection.close()


heartbeat = Heartbeat()
