"""Worker liveness: every Celery worker records, every few seconds, which queues it serves.

A worker bootstep writes `{hostname: unix time}` into one Redis hash per queue; readiness and
the queues dashboard read them back. A worker that stops (or is killed) simply stops writing,
and its entry ages out after HEARTBEAT_STALE_S — no cleanup needed.
"""

import json
import logging
import socket
import time
from typing import Any

import redis
from celery import bootsteps

from dspex_site import redis_ha
from dspex_site.db import pool_stats

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 5.0
HEARTBEAT_STALE_S = 30.0
KEY = "dspex:workers:{queue}"
# A worker's database pool usage (dspex_site.db.pool_stats), sent with its heartbeat.
POOLS_KEY = "dspex:workers:db_pools"


def _client() -> redis.Redis:
    """REDIS_URL's server or the Sentinel master (dspex_site.redis_ha), kept per process."""
    return redis_ha.client()


def beat(hostname: str, queues: list[str]) -> None:
    now = time.time()
    pools = pool_stats()
    try:
        with _client().pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.hset(KEY.format(queue=queue), hostname, now)
                pipe.expire(KEY.format(queue=queue), int(HEARTBEAT_STALE_S * 10))
            if pools:
                pipe.hset(POOLS_KEY, hostname, json.dumps({"at": now, "pools": pools}))
                pipe.expire(POOLS_KEY, int(HEARTBEAT_STALE_S * 10))
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("worker heartbeat not written: %s", type(exc).__name__)


def alive(queues: list[str]) -> dict[str, list[str]]:
    """{queue: [hostnames with a fresh heartbeat]} for the given queues."""
    cutoff = time.time() - HEARTBEAT_STALE_S
    with _client().pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.hgetall(KEY.format(queue=queue))
        found = pipe.execute()
    return {
        queue: sorted(host.decode() for host, at in entries.items() if float(at) >= cutoff)
        for queue, entries in zip(queues, found, strict=True)
    }


def worker_pools() -> dict[str, dict]:
    """{worker hostname: {alias: pool stats}} from fresh heartbeats of workers that have a pool."""
    cutoff = time.time() - HEARTBEAT_STALE_S
    found = {}
    for host, raw in _client().hgetall(POOLS_KEY).items():
        entry = json.loads(raw)
        if entry["at"] >= cutoff:
            found[host.decode() if isinstance(host, bytes) else host] = entry["pools"]
    return dict(sorted(found.items()))


class HeartbeatStep(bootsteps.StartStopStep):
    """Celery worker bootstep (registered in dspex_site/celery.py) that sends the heartbeats."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any):
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker: Any) -> None:
        queues = sorted(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        hostname = getattr(worker, "hostname", None) or socket.gethostname()
        beat(hostname, queues)
        self.tref = worker.timer.call_repeatedly(HEARTBEAT_EVERY_S, beat, (hostname, queues), priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


# --- beat --------------------------------------------------------------------------------------
BEAT_KEY = "dspex:beat:heartbeat"
BEAT_STALE_S = 60.0


def beat_alive_at() -> float | None:
    """Unix time of beat's last heartbeat, or None if it never wrote one."""
    value = _client().get(BEAT_KEY)
    return float(value) if value is not None else None


def _beat_loop() -> None:
    while True:
        try:
            _client().set(BEAT_KEY, time.time(), ex=int(BEAT_STALE_S * 10))
        except redis.RedisError as exc:
            logger.warning("beat heartbeat not written: %s", type(exc).__name__)
        time.sleep(HEARTBEAT_EVERY_S)


def start_beat_heartbeat(**kwargs: Any) -> None:
    """Connected to Celery's beat_init: beat itself says it is alive (django-celery-beat only
    saves `last_run_at` every few minutes, too late for readiness)."""
    import threading

    threading.Thread(target=_beat_loop, name="dspex-beat-heartbeat", daemon=True).start()
