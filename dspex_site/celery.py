"""The one Celery app, configured from Django settings (CELERY_ namespace), and its wiring.

Queue names live in `Queue` so producers, routes and the Procfile agree on them. `TASKS` is the
one table of every task: its queue, its soft and hard time limits and, for periodic ones, its beat
schedule. Routes (`task_routes`) and limits (`task_annotations`) are derived from it here; the beat
rows are synced from it by `dspex_site.beat.sync_schedules` (after every `migrate`, and by
`manage.py dspex_schedules`). The broker's visibility timeout is longer than the longest hard
limit (4 h optimizations), so Redis never re-delivers a task that is still running. Recovery from
a killed worker therefore does not wait for the visibility timeout: job rows carry heartbeats and
the reapers re-queue the ones whose worker went silent (dspex_site.jobs).
"""

import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from celery import Celery
from celery.fixups.django import DjangoFixup, DjangoWorkerFixup  # type: ignore[attr-defined]  # not in celery-types
from django.db import close_old_connections
from kombu import Exchange
from kombu import Queue as KombuQueue

from dspex_site import redis_ha
from dspex_site.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")


class Queue(StrEnum):
    DEFAULT = "default"
    OPTIMIZATION = "optimization"
    LLM_CALLS = "llm_calls"
    EMBEDDINGS = "embeddings"
    CLEANUP = "cleanup"
    PRIORITY = "priority"


# Default worker concurrency per queue (README, "Background work"); the Procfile and `make run` read these.
CONCURRENCY = {
    Queue.DEFAULT: 10,
    Queue.OPTIMIZATION: 2,
    Queue.LLM_CALLS: 20,
    Queue.EMBEDDINGS: 5,
    Queue.CLEANUP: 3,
    Queue.PRIORITY: 50,
}

# Worker processes by queue group: (queues, pool, concurrency). LM-bound queues use threads:
# their tasks wait on HTTP almost all the time, and a thread costs ~nothing next to a process
# (README "Background work" has the measurements). Optimizations run in prefork: they are
# CPU-heavy, long, and need hard time limits, which only a process pool can enforce.
WORKER_GROUPS = {
    "llm": ((Queue.LLM_CALLS,), "threads", CONCURRENCY[Queue.LLM_CALLS]),
    "priority": ((Queue.PRIORITY,), "threads", CONCURRENCY[Queue.PRIORITY]),
    "background": (
        (Queue.DEFAULT, Queue.EMBEDDINGS, Queue.CLEANUP),
        "threads",
        CONCURRENCY[Queue.DEFAULT] + CONCURRENCY[Queue.EMBEDDINGS] + CONCURRENCY[Queue.CLEANUP],
    ),
    "optimization": ((Queue.OPTIMIZATION,), "prefork", CONCURRENCY[Queue.OPTIMIZATION]),
}

OPTIMIZATION_HARD_LIMIT_S = 4 * 3600
# Longer than any hard limit: a message is only re-delivered by the broker when its worker is
# surely gone; earlier recovery is the reaper's job.
VISIBILITY_TIMEOUT_S = OPTIMIZATION_HARD_LIMIT_S + 3600


@dataclass(frozen=True)
class Every:
    """A beat interval: `seconds`, or the name of the setting that holds them (read at sync time)."""

    seconds: float = 0
    setting: str = ""


@dataclass(frozen=True)
class Cron:
    """A beat crontab, UTC."""

    minute: str
    hour: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"
    day_of_week: str = "*"


@dataclass(frozen=True)
class Wiring:
    """How one task runs: its queue, soft/hard time limits (s), other task options, and its beat
    schedule (`schedule_name` is the beat row's name, kept stable across releases)."""

    queue: Queue
    soft_s: int
    hard_s: int
    schedule: Every | Cron | None = None
    schedule_name: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


def _execution_limit_s() -> int:
    # Read from the environment like settings.DSPEX_EXECUTION_TIME_LIMIT_S: this module is
    # imported while the settings module itself is still loading.
    return env_int("DSPEX_EXECUTION_TIME_LIMIT_S", 300)


# Every task of the project. The thread pool cannot enforce time limits, so for executions the
# same limit is also enforced by the reaper (executions.reap), whatever the pool. Periodic tasks
# that recover or clean up run on `cleanup`, so they run even when every other worker is busy.
TASKS: dict[str, Wiring] = {
    "executions.run": Wiring(Queue.LLM_CALLS, _execution_limit_s(), _execution_limit_s() + 60),
    "executions.dispatch_batch": Wiring(Queue.DEFAULT, 50, 60),
    "executions.reap": Wiring(
        Queue.CLEANUP, 50, 60, Every(setting="DSPEX_REAP_INTERVAL_S"), "dspex: reap stuck executions"
    ),
    "executions.prune": Wiring(Queue.CLEANUP, 240, 300, Cron("17"), "dspex: prune old executions"),
    "executions.prune_sessions": Wiring(Queue.CLEANUP, 50, 60, Every(300), "dspex: prune expired sessions"),
    "executions.analyze": Wiring(Queue.CLEANUP, 540, 600, Cron("40", "3"), "dspex: analyze big tables"),
    "optimization.run": Wiring(
        Queue.OPTIMIZATION,
        OPTIMIZATION_HARD_LIMIT_S - 300,
        OPTIMIZATION_HARD_LIMIT_S,
        options={"max_retries": 2},
    ),
    "optimization.reap_stale": Wiring(
        Queue.CLEANUP, 50, 60, Every(30), "optimization: re-queue runs of lost workers"
    ),
    # A schedule's tick only creates (or skips) a run, quickly: on `default`, not behind 4-hour
    # runs. Its beat rows are made per OptimizationSchedule (optimization.schedules).
    "optimization.scheduled": Wiring(Queue.DEFAULT, 300, 360),
    "caching.embed_corpus": Wiring(Queue.EMBEDDINGS, 3300, 3600, options={"max_retries": 3}),
    "caching.warm_embeddings": Wiring(Queue.EMBEDDINGS, 240, 300, Every(600), "dspex: warm embeddings"),
    # Canaries (programs.releases): every running one's rules once a minute, and one canary's
    # after feedback on one of its executions.
    "releases.evaluate_canaries": Wiring(
        Queue.DEFAULT, 50, 60, Every(setting="DSPEX_CANARY_EVALUATE_S"), "dspex: evaluate canaries"
    ),
    "releases.evaluate_canary": Wiring(Queue.DEFAULT, 20, 30),
    "monitoring.rollup": Wiring(Queue.CLEANUP, 50, 60, Every(60), "dspex: usage rollups"),
    "monitoring.selftest_error": Wiring(Queue.DEFAULT, 10, 20),
}


class _WorkerFixup(DjangoWorkerFixup):
    """Celery's Django worker fixup, except that a task does not close the database connection.

    Celery's closes every connection of the thread before and after each task, so each task of a
    worker opened a new one (a TCP connection, authentication and a Postgres backend process:
    more CPU than the claim and the finish together). Like Django around a request, only what
    `close_old_connections` would close is closed: a connection past `DATABASE_CONN_MAX_AGE`, or
    one left broken (a restarted Postgres), and the next task's first query health-checks it."""

    def close_database(self, **kwargs: Any) -> None:
        close_old_connections()


class _Fixup(DjangoFixup):
    @property
    def worker_fixup(self) -> DjangoWorkerFixup:
        if self.__dict__.get("_worker_fixup") is None:
            self._worker_fixup = _WorkerFixup(self.app)
        return self._worker_fixup

    @worker_fixup.setter
    def worker_fixup(self, value: DjangoWorkerFixup) -> None:
        self._worker_fixup = value


def django_fixup(app: Celery) -> DjangoFixup | None:
    """Celery's Django fixup (`celery.fixups.django:fixup`, installed when
    DJANGO_SETTINGS_MODULE is set) with the worker part above."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    fixup = _Fixup(app)
    fixup.install()
    return fixup


app = Celery("dspex", fixups=[f"{__name__}:django_fixup"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_default_queue = Queue.DEFAULT.value


def broker_is_amqp(url: str | None = None) -> bool:
    """Whether the broker is RabbitMQ (`amqp://`, `amqps://`, `pyamqp://`), not Redis. Without a
    URL, the environment's `CELERY_BROKER_URL` (where the settings take it from): this module is
    imported while the settings are still being read."""
    if url is None:
        url = os.environ.get("CELERY_BROKER_URL", "")
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


def task_queues(amqp: bool) -> list[KombuQueue]:
    """The queues of DESIGN's table. On RabbitMQ each is a durable **quorum** queue (replicated,
    survives a broker node) behind a topic exchange of its name: Celery's native delayed delivery
    (countdowns of retries and re-queues) needs a topic exchange with quorum queues, since a
    quorum queue allows no global QoS for a worker to hold ETA messages. The `priority` queue is
    how the design does priorities, so no message priorities are needed (RabbitMQ 3.x quorum
    queues have none)."""
    if not amqp:
        return [KombuQueue(q.value, routing_key=q.value) for q in Queue]
    return [
        KombuQueue(
            q.value,
            Exchange(q.value, type="topic", durable=True),
            routing_key=q.value,
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        )
        for q in Queue
    ]


AMQP = broker_is_amqp()
# The broker goes through Sentinel when REDIS_SENTINELS is set and CELERY_BROKER_URL names no
# other broker (the settings then make it a `sentinel://` URL: dspex_site.redis_ha).
SENTINEL = (
    redis_ha.SentinelConfig.from_env()
    if os.environ.get("CELERY_BROKER_URL", "sentinel://").startswith("sentinel://")
    else None
)
app.conf.task_queues = task_queues(AMQP)
app.conf.task_routes = {name: {"queue": wiring.queue.value} for name, wiring in TASKS.items()}
app.conf.task_annotations = {
    name: {"soft_time_limit": wiring.soft_s, "time_limit": wiring.hard_s, **wiring.options}
    for name, wiring in TASKS.items()
}
app.conf.broker_transport_options = (
    {
        # Publisher confirms: a publish returns once RabbitMQ has the message (on a quorum
        # queue: on a majority of its nodes), so an accepted execution is never only in flight.
        "confirm_publish": True,
        # A dead RabbitMQ must fail a publish in about a second (the API answers 503), as Redis does.
        "connect_timeout": 1.0,
    }
    if AMQP
    else {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        # A dead Redis must fail a publish in about a second (the API answers 503), not hang it.
        "socket_connect_timeout": 1.0,
        "socket_timeout": 5.0,
        # Through Sentinel (REDIS_SENTINELS): the master's name and how to reach the sentinels.
        **redis_ha.broker_transport_options(SENTINEL),
    }
)
if AMQP:
    from celery.signals import worker_init

    @worker_init.connect
    def declare_every_queue(sender: Any = None, **kwargs: Any) -> None:
        """Declare every queue (and its exchange) before the worker's consumer starts, whichever
        queues this worker serves: native delayed delivery binds all of them to its exchanges,
        and a task published to a queue no worker has declared yet must not be unroutable."""
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for queue in app.conf.task_queues:
                queue.bind(channel).declare()

    app.conf.broker_connection_timeout = 1.0
    app.conf.worker_detect_quorum_queues = True  # per-consumer QoS (quorum queues refuse global)
    app.conf.broker_native_delayed_delivery_queue_type = "quorum"
app.conf.task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
FAILOVER_RETRY_EVERY_S = 0.5


def _pause_before_retry(exc: Exception, interval: float) -> None:
    """kombu's `ensure` retries a failed publish at once (interval 0: the Redis transport
    "connects" lazily, so its reconnect never waits): pause, so the retries span the failover."""
    if not interval:
        time.sleep(FAILOVER_RETRY_EVERY_S)


if SENTINEL is not None:
    # A failover (the sentinels notice the master is gone, then promote a replica) takes a few
    # seconds: a publish keeps retrying, each retry asking the sentinels again, for about
    # REDIS_FAILOVER_WAIT_S before the API answers 503, so an execution submitted during a
    # failover is queued on the new master rather than refused.
    app.conf.task_publish_retry_policy = {
        "max_retries": max(2, math.ceil(SENTINEL.failover_wait_s / FAILOVER_RETRY_EVERY_S)),
        "interval_start": 0,
        "interval_step": 0.25,
        "interval_max": FAILOVER_RETRY_EVERY_S,
        "errback": _pause_before_retry,
    }
app.autodiscover_tasks()


_discovery = threading.Lock()


def registered(name: str) -> Any:
    """The registered task `name`, importing every app's tasks module on first use (autodiscovery).

    Under a lock: the threads of a web worker publish their first tasks at the same moment, and
    a second thread asking while the first one is still importing would be told the task does
    not exist (Celery's NotRegistered, answered as 503 `queue_unavailable`)."""
    task = app.tasks.get(name)
    if task is None:
        with _discovery:
            if name not in app.tasks:
                app.loader.import_default_modules()
        task = app.tasks[name]
    return task


def publish(name: str, *args: Any, queue: str | None = None, countdown: float | None = None) -> None:
    """Publish task `name` from domain code, which never imports a tasks module (tasks import the
    domain, not the reverse). Through the registered task, so the embedded mode's eager setting
    applies; raises kombu's OperationalError when the broker is unreachable, after about a second."""
    task = registered(name)
    options: dict[str, Any] = {"queue": queue} if queue else {}
    # celery-types admits only a tuple for `args` and a float for `countdown`; Celery takes any
    # sequence and None ("no countdown"), and the published message keeps a list (its `argsrepr`).
    if countdown and AMQP:
        # RabbitMQ's native delayed delivery counts whole seconds, and Celery refuses a countdown
        # that truncates to 0 ("countdown must be a positive number"): a sub-second backoff
        # waits one second there.
        countdown = float(math.ceil(countdown))
    task.apply_async(args=list(args), countdown=countdown or None, **options)


# Every worker reports which queues it serves (readiness, queues dashboard): monitoring.heartbeat.
from monitoring.heartbeat import HeartbeatStep  # noqa: E402 - after the app exists

app.steps["worker"].add(HeartbeatStep)
