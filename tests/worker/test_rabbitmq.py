"""RabbitMQ as broker (DSPEX_TEST_BROKER=amqp, the second pass of `make test`): every queue of the
design is a durable quorum queue behind a topic exchange, publishes are confirmed, and a delayed
re-queue (native delayed delivery) reaches its queue."""

import os
import subprocess
import time

import pytest

from dspex_site import celery
from tests.support import start_worker

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(os.environ.get("DSPEX_TEST_BROKER") != "amqp", reason="the RabbitMQ pass only"),
]


def queues_of(vhost: str) -> dict[str, str]:
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type", "durable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t") for line in listed.splitlines() if "\t" in line]
    return {row[0]: f"{row[1]}/{row[2]}" for row in rows if row[0] != "name"}


def test_every_queue_is_a_durable_quorum_queue_and_publishes_are_confirmed(transactional_db):
    from django.conf import settings

    vhost = settings.CELERY_BROKER_URL.rsplit("/", 1)[1]
    assert celery.AMQP and celery.app.conf.broker_transport_options["confirm_publish"] is True
    worker = start_worker(queues="cleanup")  # declares every queue at start, whichever it serves
    try:
        found = queues_of(vhost)
    finally:
        worker.stop()
    for queue in celery.Queue:
        assert found.get(queue.value) == "quorum/true", (queue, found)
    assert all(q.exchange.type == "topic" for q in celery.app.conf.task_queues)


def test_a_sub_second_countdown_is_published_as_a_whole_second(transactional_db, monkeypatch):
    sent: list[float | None] = []
    task = celery.registered("executions.run")
    monkeypatch.setattr(task, "apply_async", lambda args, countdown=None, **options: sent.append(countdown))
    started = time.monotonic()
    celery.publish("executions.run", "x", countdown=0.2)
    celery.publish("executions.run", "x", countdown=2.5)
    assert sent == [1.0, 3.0] and time.monotonic() - started < 1


def test_queue_depths_come_from_rabbitmq(transactional_db):
    from monitoring.scrape import queue_depths

    with celery.app.connection_for_write() as connection:
        for queue in celery.app.conf.task_queues:
            queue.bind(connection.default_channel).declare()
            queue.bind(connection.default_channel).purge()
    celery.publish("executions.run", "not-an-execution", queue="embeddings")  # no worker serves it here
    depths = queue_depths()
    assert depths["embeddings"] == 1 and depths["llm_calls"] == 0
    with celery.app.connection_for_write() as connection:
        celery.app.conf.task_queues[[q.name for q in celery.app.conf.task_queues].index("embeddings")].bind(
            connection.default_channel
        ).purge()
