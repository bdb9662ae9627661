"""The one Celery app, configured from Django settings (CELERY_ namespace).

Queue names live in `Queue` so producers, routes and the Procfile agree on them. Time limits
are explicit per task (`task_annotations`), and the broker's visibility timeout is longer than
the longest hard limit (4 h optimizations), so Redis never re-delivers a task that is still
running. Recovery from a killed worker therefore does not wait for the visibility timeout: the
execution rows carry heartbeats and `executions.reap` re-queues the ones whose worker went
silent (README "Background work").
"""

import os
from enum import StrEnum

from celery import Celery
from kombu import Queue as KombuQueue

from dspex_site.env import env_int

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")


class Queue(StrEnum):
    DEFAULT = "default"
    OPTIMIZATION = "optimization"
    LLM_CALLS = "llm_calls"
    EMBEDDINGS = "embeddings"
    CLEANUP = "cleanup"
    PRIORITY = "priority"


# Default worker concurrency per queue (DESIGN.md); the Procfile and `make run` read these.
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

app = Celery("dspex")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.task_queues = [KombuQueue(q.value, routing_key=q.value) for q in Queue]
app.conf.task_routes = {
    "executions.run": {"queue": Queue.LLM_CALLS.value},
    # Specific optimization housekeeping first: routes match in order.
    "optimization.reap*": {"queue": Queue.CLEANUP.value},
    "optimization.scheduled": {"queue": Queue.DEFAULT.value},
    "optimization.*": {"queue": Queue.OPTIMIZATION.value},
    "caching.embed*": {"queue": Queue.EMBEDDINGS.value},
    "caching.warm*": {"queue": Queue.EMBEDDINGS.value},
    "*.prune*": {"queue": Queue.CLEANUP.value},
    "*.reap*": {"queue": Queue.CLEANUP.value},
    "*.analyze*": {"queue": Queue.CLEANUP.value},
    "caching.trim*": {"queue": Queue.CLEANUP.value},
    "caching.snapshot*": {"queue": Queue.CLEANUP.value},
    "monitoring.rollup": {"queue": Queue.CLEANUP.value},
}
app.conf.broker_transport_options = {
    "visibility_timeout": VISIBILITY_TIMEOUT_S,
    # A dead Redis must fail a publish in about a second (the API answers 503), not hang it.
    "socket_connect_timeout": 1.0,
    "socket_timeout": 5.0,
}
app.conf.task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}


def _limits(soft: int, hard: int, **extra: object) -> dict:
    return {"soft_time_limit": soft, "time_limit": hard, **extra}


def _execution_limits() -> dict:
    # Read from the environment like settings.DSPEX_EXECUTION_TIME_LIMIT_S: this module is
    # imported while the settings module itself is still loading.
    limit = env_int("DSPEX_EXECUTION_TIME_LIMIT_S", 300)
    return _limits(limit, limit + 60)


# Explicit limits per task. The thread pool cannot enforce time limits, so for executions the
# same limit is also enforced by the reaper (executions.reap), whatever the pool.
app.conf.task_annotations = {
    "executions.run": _execution_limits(),
    "executions.reap": _limits(50, 60),
    "executions.prune": _limits(240, 300),
    "executions.analyze": _limits(540, 600),
    "executions.dispatch_batch": _limits(50, 60),
    "optimization.run": _limits(
        OPTIMIZATION_HARD_LIMIT_S - 300, OPTIMIZATION_HARD_LIMIT_S, max_retries=2, acks_late=True
    ),
}
app.autodiscover_tasks()


# Every worker reports which queues it serves (readiness, queues dashboard): monitoring.heartbeat.
from monitoring.heartbeat import HeartbeatStep  # noqa: E402 - after the app exists

app.steps["worker"].add(HeartbeatStep)
