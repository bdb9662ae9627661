"""Floods of AMQP messages, for `bench/ingestion.py --flood` and tests/ingestion: publish fast with
publisher confirms, read a queue's counts from the broker, sample a process's RSS over time.
No side effects on import (the tests import it)."""

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import amqp
import psutil
from kombu import Connection


def publish_confirmed(url: str, routing_key: str, bodies: Iterable[bytes], window: int = 2000) -> int:
    """Publish every body (persistent, JSON) to the default exchange with publisher confirms, up
    to `window` unconfirmed at once (not one round trip per message); returns how many the broker
    confirmed. A nack raises."""
    with Connection(url, connect_timeout=10) as conn:
        conn.connect()
        channel = conn.connection.channel()
        channel.confirm_select()
        pending: set[int] = set()
        nacked: list[int] = []

        def on_ack(tag: int, multiple: bool) -> None:
            if multiple:
                pending.difference_update([t for t in pending if t <= tag])
            else:
                pending.discard(tag)

        def on_nack(tag: int, multiple: bool) -> None:
            nacked.append(tag)

        channel.events["basic_ack"].add(on_ack)
        channel.events["basic_nack"].add(on_nack)
        sent = 0
        for body in bodies:
            message = amqp.Message(body, delivery_mode=2, content_type="application/json")
            channel.basic_publish(message, exchange="", routing_key=routing_key)
            sent += 1
            pending.add(sent)  # delivery tags count from 1 on a channel in confirm mode
            while len(pending) >= window:
                conn.connection.drain_events(timeout=30)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            conn.connection.drain_events(timeout=30)
        if nacked or pending:
            raise RuntimeError(f"broker nacked {len(nacked)} and left {len(pending)} of {sent} unconfirmed")
        return sent


def queue_counts(vhost: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue, as RabbitMQ counts them (`rabbitmqctl`)."""
    done = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "--no-table-headers",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise LookupError(f"no queue {queue} in vhost {vhost}: {done.stdout!r}")


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    rss: int
    done: int  # what `progress()` said (results received, executions stored, ...)
    ready: int | None = None
    unacked: int | None = None


@dataclass
class Sampler:
    """Samples `pid`'s RSS every `interval` s and the broker's counts of `queue` every
    `broker_every` s (rabbitmqctl costs a fraction of a CPU second), in a thread."""

    pid: int
    vhost: str
    queue: str
    progress: Callable[[], int]
    interval: float = 1.0
    broker_every: float = 5.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=90)

    def _run(self) -> None:
        process = psutil.Process(self.pid)
        last_broker = -self.broker_every
        while not self._stop.is_set():
            now = time.monotonic() - self._t0
            try:
                sample = Sample(now, process.memory_info().rss, self.progress())
            except psutil.Error:
                return
            if now - last_broker >= self.broker_every:
                last_broker = now
                with contextlib.suppress(subprocess.SubprocessError, LookupError, ValueError):
                    sample.ready, sample.unacked = queue_counts(self.vhost, self.queue)
            self.samples.append(sample)
            self._stop.wait(self.interval)

    @property
    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    @property
    def max_unacked(self) -> int:
        return max((s.unacked for s in self.samples if s.unacked is not None), default=0)

    def rss_after(self, done: int) -> list[int]:
        """RSS of the samples taken once `done` messages were processed (past the warm-up)."""
        return [s.rss for s in self.samples if s.done >= done]
