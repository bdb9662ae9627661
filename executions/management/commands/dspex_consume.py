"""`manage.py dspex_consume [--key KEY] [--concurrency N] [--prefetch N]`: run the executions
that messages on the `dspex_executions` RabbitMQ queue ask for (executions.ingestion;
docs/operations.md, "AMQP ingestion").

One connection consumes (on this, the main thread: py-amqp connections are not thread-safe);
`--concurrency` threads run executions, each publishing its results on a connection of its own
with publisher confirms. A message is acknowledged only after its execution row is stored and its
result (or dead letter) confirmed by the broker. The broker hands over at most `--prefetch`
unacknowledged messages (basic.qos, default the concurrency), so a flood waits in RabbitMQ, not
in this process's memory.

Poison messages (executions.ingestion): a message that raised on its last allowed delivery
(`DSPEX_CONSUME_MAX_DELIVERIES`) is dead-lettered with its last error; earlier failures go back
to the queue after a short back-off. A database or broker outage is not the message's fault: the
message stays unacknowledged (its delivery count unchanged) and is retried until the outage ends.
On exit the consumer prints how many messages it took and the most it held at once.
"""

import json
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import amqp.exceptions
import kombu.exceptions
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import InterfaceError
from django.db import OperationalError as DatabaseUnavailable
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from executions import ingestion

logger = logging.getLogger("executions.ingestion")

QUORUM = {"x-queue-type": "quorum"}
# Outages, not the message's fault: held and retried, never counted as a failed delivery.
TRANSIENT = (
    DatabaseUnavailable,
    InterfaceError,
    kombu.exceptions.OperationalError,
    amqp.exceptions.RecoverableConnectionError,
    amqp.exceptions.ConnectionError,
    OSError,
)
RETRY_CAP_S = 30.0
TRANSIENT_HOLD_S = 600.0
T = TypeVar("T")


def declare(connection: Connection, max_deliveries: int) -> tuple[Any, Queue]:
    """The consumer's queues and exchange (idempotent): the work queue with its delivery limit,
    its dead-letter queue, the results exchange. A `dspex_executions` that exists with other
    arguments (an older consumer's, or a publisher's) is used as it is, with a warning: the
    consumer's own count then stops poison messages, except those that kill it."""
    channel = connection.channel()
    Exchange(ingestion.RESULTS_EXCHANGE, type="topic", durable=True)(channel).declare()
    Queue(ingestion.DEAD_QUEUE, durable=True, queue_arguments=QUORUM)(channel).declare()
    work = Queue(ingestion.QUEUE, durable=True, queue_arguments=ingestion.queue_arguments(max_deliveries))
    try:
        work(channel).declare()
    except amqp.exceptions.PreconditionFailed as exc:  # closes the channel
        logger.warning(
            "queue %s exists with other arguments (%s): RabbitMQ will not dead-letter a message that "
            "kills consumers; delete the queue once empty, or set a policy with delivery-limit %d and "
            "dead-letter-routing-key %s (docs/operations.md, Poison messages)",
            ingestion.QUEUE,
            exc.reply_text,
            max_deliveries - 1,
            ingestion.DEAD_QUEUE,
        )
        channel = connection.channel()
        work = Queue(ingestion.QUEUE, durable=True, queue_arguments=QUORUM, no_declare=True)
        work(channel).queue_declare(passive=True)
    return channel, work(channel)


class Publisher(threading.local):
    """One confirmed-publish connection per executing thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.producer: Producer | None = None

    def get(self) -> Producer:
        if self.producer is None:
            connection = Connection(self.url, transport_options={"confirm_publish": True}, connect_timeout=5)
            self.producer = Producer(connection.channel())
        return self.producer

    def publish(self, body: dict[str, Any], *, exchange: str, routing_key: str, **properties: Any) -> None:
        # Synchronous: with confirm_publish, returns once the broker has the message.
        self.get().publish(
            json.dumps(body, ensure_ascii=False).encode(),
            exchange=exchange,
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 3},
            **properties,
        )


class Command(BaseCommand):
    help = "Consume execution requests from RabbitMQ (queue dspex_executions) and publish their results."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--key", default=None, help="API key messages run as (default: DSPEX_CONSUME_KEY)"
        )
        parser.add_argument("--concurrency", type=int, default=None, help="executions at once (threads)")
        parser.add_argument("--prefetch", type=int, default=None, help="unacknowledged messages at most")
        parser.add_argument(
            "--max-deliveries",
            type=int,
            default=None,
            help="deliveries before a failing message is dead-lettered (DSPEX_CONSUME_MAX_DELIVERIES)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            url = ingestion.amqp_url()
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        try:
            principal = ingestion.principal_for(options["key"] or settings.DSPEX_CONSUME_KEY)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        concurrency = max(1, options["concurrency"] or settings.DSPEX_CONSUME_CONCURRENCY)
        prefetch = max(1, options["prefetch"] or settings.DSPEX_CONSUME_PREFETCH or concurrency)
        self.max_deliveries = max(1, options["max_deliveries"] or settings.DSPEX_CONSUME_MAX_DELIVERIES)
        self.stop = stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        done: queue.Queue[tuple[Message, bool]] = queue.Queue()
        publisher = Publisher(url)

        def work(message: Message) -> None:
            ok = True
            try:
                self.run_one(message, principal, publisher)
            except Exception as exc:  # logged where it was raised
                logger.info("message goes back to the queue (%s)", type(exc).__name__)
                ok = False
            done.put((message, ok))

        in_flight = peak = taken = 0
        with Connection(url, heartbeat=30, connect_timeout=5) as connection:
            channel, work_queue = declare(connection, self.max_deliveries)
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="consume")

            def on_message(message: Message) -> None:
                nonlocal in_flight, peak, taken
                in_flight += 1
                taken += 1
                peak = max(peak, in_flight)
                pool.submit(work, message)

            consumer = Consumer(channel, [work_queue], on_message=on_message, no_ack=False)
            # Per-consumer QoS (quorum queues refuse a global one).
            consumer.qos(prefetch_count=prefetch, apply_global=False)
            consumer.consume()
            cancelled = False
            self.stdout.write(
                f"dspex_consume: queue {ingestion.QUEUE}, key {principal.api_key.prefix}…, "
                f"concurrency {concurrency}, prefetch {prefetch}, max deliveries {self.max_deliveries}"
            )
            self.stdout.flush()
            while True:
                if stop.is_set():
                    if not cancelled:
                        # Take nothing new (deliveries already on the wire arrive before the
                        # broker's cancel-ok and are run), then finish what is in flight. Never
                        # skipped, even with nothing in flight: a delivery arriving after the
                        # pool shut down would crash the consumer while it closes.
                        cancelled = True
                        consumer.cancel()
                    if not in_flight:
                        break
                try:
                    connection.drain_events(timeout=0.1)
                except TimeoutError:
                    connection.heartbeat_check()
                while True:
                    try:
                        message, ok = done.get_nowait()
                    except queue.Empty:
                        break
                    in_flight -= 1
                    if ok:
                        message.ack()
                    else:
                        message.requeue()
            pool.shutdown(wait=True)
        self.stdout.write(f"dspex_consume: stopped; messages taken {taken}, in flight at most {peak}")
        self.stdout.flush()

    def retrying(self, what: str, call: Callable[[], T]) -> T:
        """`call()`, retried with back-off while the database or the broker is unavailable: the
        message stays unacknowledged meanwhile, so its delivery count does not grow. After
        `TRANSIENT_HOLD_S` (below RabbitMQ's 30 min `consumer_timeout`, which would close the
        channel) the error is raised: the message goes back to the queue, one delivery spent."""
        wait = 1.0
        give_up = time.monotonic() + TRANSIENT_HOLD_S
        while True:
            try:
                return call()
            except TRANSIENT as exc:
                if self.stop.is_set() or time.monotonic() + wait > give_up:
                    raise
                logger.warning("%s: %s: %s; retrying in %.0f s", what, type(exc).__name__, exc, wait)
                self.stop.wait(wait)
                wait = min(wait * 2, RETRY_CAP_S)

    def run_one(self, message: Message, principal: Any, publisher: Publisher) -> None:
        """Process one delivery and publish its result or dead letter. Raises (the message goes
        back to the queue) only for a failure before the message's last allowed delivery."""
        properties = message.properties
        before = ingestion.deliveries_before(message.headers)
        if before >= self.max_deliveries:  # the queue lacks the broker-side limit
            reply = ingestion.Reply(
                ingestion.delivery_limit_body(before, None), dead=True, headers={"x-dspex-deliveries": before}
            )
        else:
            try:
                body = cast(bytes, message.body)
                reply = self.retrying("processing", lambda: ingestion.process(body, properties, principal))
            except TRANSIENT:
                raise  # stopping during an outage: back to the queue
            except Exception as exc:
                if before + 1 < self.max_deliveries:
                    logger.exception(
                        "message failed (delivery %d of at most %d); it goes back to the queue",
                        before + 1,
                        self.max_deliveries,
                    )
                    self.stop.wait(min(2.0**before, RETRY_CAP_S))
                    raise
                logger.exception("message failed on its last delivery (%d); dead-lettered", before + 1)
                reply = ingestion.Reply(
                    ingestion.delivery_limit_body(before + 1, exc),
                    dead=True,
                    headers={"x-dspex-deliveries": before + 1},
                )
        self.retrying("result publish", lambda: self.deliver(message, reply, publisher))

    def deliver(self, message: Message, reply: ingestion.Reply, publisher: Publisher) -> None:
        properties = message.properties
        reply_to, correlation = properties.get("reply_to"), properties.get("correlation_id")
        extra = {"correlation_id": correlation} if correlation else {}
        if reply.message_id:
            extra["message_id"] = reply.message_id
        try:
            if reply.dead:
                logger.warning(
                    "message dead-lettered: %s: %s", reply.body.get("code"), reply.body.get("detail")
                )
                headers = {
                    **(message.headers or {}),
                    **reply.headers,
                    "x-dspex-error": json.dumps(reply.body),
                }
                headers["x-dspex-error-code"] = reply.body.get("code", "")
                self.dead_letter(message, headers, publisher)
                if reply_to:
                    publisher.publish(reply.body, exchange="", routing_key=reply_to, **extra)
                return
            if reply_to:
                publisher.publish(reply.body, exchange="", routing_key=reply_to, **extra)
            else:
                publisher.publish(
                    reply.body, exchange=ingestion.RESULTS_EXCHANGE, routing_key=reply.routing_key, **extra
                )
        except Exception:
            publisher.producer = None  # a failed publish: reconnect next time
            raise

    def dead_letter(self, message: Message, headers: dict[str, Any], publisher: Publisher) -> None:
        """The original body, unchanged, on the dead-letter queue with the reason in its headers."""
        correlation = message.properties.get("correlation_id")
        publisher.get().publish(
            message.body,
            exchange="",
            routing_key=ingestion.DEAD_QUEUE,
            headers=headers,
            content_type=message.content_type or "application/octet-stream",
            content_encoding=message.content_encoding or "binary",
            delivery_mode=2,
            retry=True,
            retry_policy={"max_retries": 3},
            **({"correlation_id": correlation} if correlation else {}),  # type: ignore[arg-type]
        )
