"""`manage.py dspex_consume [--key KEY] [--concurrency N] [--prefetch N]`: run the executions
that messages on the `dspex_executions` RabbitMQ queue ask for (executions.ingestion;
docs/operations.md, "AMQP ingestion").

One connection consumes (on this, the main thread: py-amqp connections are not thread-safe);
`--concurrency` threads run executions, each publishing its results on a connection of its own
with publisher confirms. A message is acknowledged only after its execution row is stored and its
result (or dead letter) confirmed by the broker. The broker hands over at most `--prefetch`
unacknowledged messages (basic.qos, default the concurrency), so a flood waits in RabbitMQ, not
in this process's memory.
"""

import json
import logging
import queue
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.message import Message

from executions import ingestion

logger = logging.getLogger("executions.ingestion")

QUORUM = {"x-queue-type": "quorum"}


def declare(channel: Any) -> Queue:
    """The consumer's queues and exchange (idempotent): the work queue, its dead-letter queue,
    the results exchange."""
    Exchange(ingestion.RESULTS_EXCHANGE, type="topic", durable=True)(channel).declare()
    Queue(ingestion.DEAD_QUEUE, durable=True, queue_arguments=QUORUM)(channel).declare()
    work = Queue(ingestion.QUEUE, durable=True, queue_arguments=QUORUM)(channel)
    work.declare()
    return work


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
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        done: queue.Queue[tuple[Message, bool]] = queue.Queue()
        publisher = Publisher(url)

        def work(message: Message) -> None:
            ok = True
            try:
                self.run_one(message, principal, publisher)
            except Exception:
                logger.exception("message not processed; it goes back to the queue")
                publisher.producer = None  # a failed publish: reconnect next time
                ok = False
            done.put((message, ok))

        in_flight = 0
        with Connection(url, heartbeat=30, connect_timeout=5) as connection:
            channel = connection.channel()
            work_queue = declare(channel)
            pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="consume")

            def on_message(message: Message) -> None:
                nonlocal in_flight
                in_flight += 1
                pool.submit(work, message)

            consumer = Consumer(channel, [work_queue], on_message=on_message, no_ack=False)
            # Per-consumer QoS (quorum queues refuse a global one).
            consumer.qos(prefetch_count=prefetch, apply_global=False)
            consumer.consume()
            cancelled = False
            self.stdout.write(
                f"dspex_consume: queue {ingestion.QUEUE}, key {principal.api_key.prefix}…, "
                f"concurrency {concurrency}, prefetch {prefetch}"
            )
            self.stdout.flush()
            while not stop.is_set() or in_flight:
                if stop.is_set() and not cancelled:
                    cancelled = True
                    consumer.cancel()  # finish what is in flight, take nothing new
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

    def run_one(self, message: Message, principal: Any, publisher: Publisher) -> None:
        properties = message.properties
        reply = ingestion.process(cast(bytes, message.body), properties, principal)
        reply_to, correlation = properties.get("reply_to"), properties.get("correlation_id")
        extra = {"correlation_id": correlation} if correlation else {}
        if reply.message_id:
            extra["message_id"] = reply.message_id
        if reply.dead:
            logger.warning("message dead-lettered: %s: %s", reply.body.get("code"), reply.body.get("detail"))
            headers = {**(message.headers or {}), "x-dspex-error": json.dumps(reply.body)}
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
