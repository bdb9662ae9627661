"""`manage.py dspex_consume` end to end: a real RabbitMQ virtual host of this slot's own, the real
consumer process, the test database, and the simulated provider over HTTP (executions.ingestion).
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from executions import ingestion
from executions.models import CognitiveExecution, IngestedMessage
from tests.factories import KeyFactory, ProgramFactory, default_project
from tests.support import ROOT, SimServer, process_env, sim_env, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

VHOST = f"dspex-ingest-{os.environ.get('DSPEX_TEST_SLOT', '0')}"
URL = f"amqp://guest:guest@localhost:5672/{VHOST}"


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=check)


@pytest.fixture
def vhost() -> Iterator[str]:
    """A fresh virtual host for each test (the machine's RabbitMQ is shared): deleted after."""
    rabbitmqctl("delete_vhost", VHOST, check=False)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    yield URL
    rabbitmqctl("delete_vhost", VHOST, check=False)


class Consumer:
    def __init__(self, key: str, simlm: SimServer, *args: str) -> None:
        env = process_env(DSPEX_AMQP_URL=URL, DSPEX_CONSUME_KEY=key, **sim_env(simlm))
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "dspex_consume", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.started = ""  # what it printed up to its start line (warnings included)
        for _ in range(20):
            line = self.proc.stdout.readline().decode()  # type: ignore[union-attr]
            self.started += line
            if not line or "dspex_consume: queue dspex_executions" in line:
                break
        assert "dspex_consume: queue dspex_executions" in line, self.started + self.output()

    def output(self) -> str:
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return out.decode()[-3000:] if out else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def setup(vhost: str, http_provider: SimServer) -> Iterator[dict[str, Any]]:
    program = ProgramFactory(name="qa-ingest")
    key = KeyFactory(service=True, project=default_project(), scopes=["execute"])
    started: list[Consumer] = []

    def consumer(*args: str) -> Consumer:
        started.append(Consumer(key.key, http_provider, *args))
        return started[-1]

    yield {"program": program, "key": key, "consumer": consumer, "sim": http_provider}
    for c in started:
        c.stop()


def work_queue(max_deliveries: int = 5) -> Queue:
    """`dspex_executions` as the consumer declares it (its delivery limit and dead-lettering)."""
    return Queue("dspex_executions", durable=True, queue_arguments=ingestion.queue_arguments(max_deliveries))


QUORUM = {"x-queue-type": "quorum"}
DEAD = Queue("dspex_executions.dead", durable=True, queue_arguments=QUORUM)


def publish(conn: Connection, body: Any, **properties: Any) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.Producer().publish(
        raw, exchange="", routing_key="dspex_executions", content_type="application/json", **properties
    )


def reply_queue(conn: Connection) -> Queue:
    queue = Queue(f"replies-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True)
    queue(conn.default_channel).declare()
    return queue


def take(conn: Connection, queue: Queue, timeout: float = 30) -> Any:
    bound = queue(conn.default_channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = bound.get(no_ack=True)
        if message is not None:
            return message
        time.sleep(0.05)
    raise AssertionError(f"no message on {queue.name} within {timeout} s")


def test_reply_to_round_trip_with_correlation_id(setup: dict[str, Any]) -> None:
    setup["consumer"]()
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        body = {"program": "qa-ingest", "input": {"question": "What is 2+2?"}, "message_id": "m-1"}
        publish(conn, body, reply_to=replies.name, correlation_id="corr-42")
        message = take(conn, replies)
    result = json.loads(message.body)
    assert message.properties["correlation_id"] == "corr-42"
    assert result["status"] == "succeeded" and result["output"]["answer"]
    execution = CognitiveExecution.objects.get(pk=result["id"])
    assert execution.program_id == setup["program"].id
    assert execution.api_key_id == setup["key"].pk  # ran as the consumer's key
    assert result["metrics"]["lm_calls"] >= 1 and setup["sim"].requests() >= 1
    assert IngestedMessage.objects.get(pk="m-1").execution_id == execution.id


def test_without_reply_to_results_go_to_the_results_exchange(setup: dict[str, Any]) -> None:
    setup["consumer"]()
    with Connection(URL) as conn:
        results = Queue(
            "results-qa",
            Exchange("dspex_results", type="topic", durable=True),
            routing_key="qa-ingest",
            exclusive=True,
        )
        results(conn.default_channel).declare()
        publish(
            conn, {"program": str(setup["program"].id), "input": {"question": "hi"}}, message_id="prop-id"
        )
        result = json.loads(take(conn, results).body)
    assert result["status"] == "succeeded"
    # The AMQP message_id property is the key when the body names none.
    assert IngestedMessage.objects.get(pk="prop-id").execution_id == uuid.UUID(result["id"])


def test_the_same_message_id_twice_runs_once_and_republishes(setup: dict[str, Any]) -> None:
    setup["consumer"]()
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        body = {"program": "qa-ingest", "input": {"question": "once"}, "message_id": "dup-1"}
        publish(conn, body, reply_to=replies.name, correlation_id="a")
        first = json.loads(take(conn, replies).body)
        publish(conn, body, reply_to=replies.name, correlation_id="b")
        second = take(conn, replies)
    assert second.properties["correlation_id"] == "b"
    assert json.loads(second.body)["id"] == first["id"]
    assert CognitiveExecution.objects.count() == 1


def test_killed_after_the_row_is_stored_the_redelivery_does_not_run_twice(setup: dict[str, Any]) -> None:
    from executions import housekeeping

    setup["sim"].configure(latency_ms=4000)
    consumer = setup["consumer"]()
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        body = {"program": "qa-ingest", "input": {"question": "slow"}, "message_id": "crash-1"}
        publish(conn, body, reply_to=replies.name, correlation_id="c")
        wait_for(lambda: IngestedMessage.objects.filter(pk="crash-1").exists(), 20, "the stored row")
        consumer.proc.kill()  # SIGKILL: the message was never acknowledged
        consumer.proc.wait()
        # The reaper finds the lost run (its heartbeat stale) and puts it back to pending.
        from datetime import timedelta

        from django.utils import timezone

        housekeeping.reap(now=timezone.now() + timedelta(seconds=120))
        setup["sim"].configure(latency_ms=0)
        setup["consumer"]()
        result = json.loads(take(conn, replies, timeout=40).body)
    assert result["status"] == "succeeded"
    assert CognitiveExecution.objects.count() == 1
    assert str(IngestedMessage.objects.get(pk="crash-1").execution_id) == result["id"]


def test_malformed_messages_are_dead_lettered_and_do_not_block(setup: dict[str, Any]) -> None:
    setup["consumer"]()
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        publish(conn, b"{not json", reply_to=replies.name)
        publish(conn, {"program": "no-such-program", "input": {"question": "x"}})
        publish(conn, {"program": "qa-ingest", "input": {"wrong": "x"}})
        publish(
            conn,
            {"program": "qa-ingest", "input": {"question": "good"}, "message_id": "good-1"},
            reply_to=replies.name,
        )
        first = json.loads(take(conn, replies).body)
        good = json.loads(take(conn, replies).body)
        letters = [take(conn, DEAD) for _ in range(3)]
    assert first["code"] == "malformed_request"
    assert good["status"] == "succeeded"
    codes = [json.loads(m.headers["x-dspex-error"]) for m in letters]
    assert [c["code"] for c in codes] == ["malformed_request", "not_found", "invalid_input"]
    assert codes[1]["errors"][0]["path"] == "program"
    assert codes[2]["errors"][0]["path"].startswith("input")
    assert letters[0].body == b"{not json"  # the original body, unchanged
    assert CognitiveExecution.objects.count() == 1


def test_a_flood_stays_in_the_broker_not_in_memory(setup: dict[str, Any]) -> None:
    """5,000 messages published at once (with confirms): the consumer holds at most its prefetch
    unacknowledged (counted by RabbitMQ and by the consumer), and its RSS stays flat while it
    works through them; the rest waits in RabbitMQ. `bench/ingestion.py --flood 100000` is the
    full-size run."""
    from bench.amqpflood import Sampler, publish_confirmed

    setup["sim"].configure(latency_ms=0)
    with Connection(URL) as conn:
        work_queue()(conn.default_channel).declare()
    bodies = (
        json.dumps({"program": "qa-ingest", "input": {"question": f"q{n}"}, "message_id": f"f-{n}"}).encode()
        for n in range(5_000)
    )
    assert publish_confirmed(URL, "dspex_executions", bodies) == 5_000
    consumer = setup["consumer"]("--concurrency", "4", "--prefetch", "6")
    progress = {"done": 0}
    sampler = Sampler(
        consumer.proc.pid, VHOST, "dspex_executions", lambda: progress["done"], broker_every=2.0
    )
    sampler.start()
    try:
        deadline = time.monotonic() + 180
        while progress["done"] < 1_500 and time.monotonic() < deadline:
            progress["done"] = CognitiveExecution.objects.count()
            time.sleep(0.5)
    finally:
        sampler.stop()
    assert progress["done"] >= 1_500, progress
    with Connection(URL) as conn:
        backlog = queue_depth(conn, work_queue())
    consumer.stop()
    out = consumer.output()
    assert backlog > 3_000  # the flood waits in RabbitMQ
    broker_seen = [s.unacked for s in sampler.samples if s.unacked is not None]
    assert len(broker_seen) >= 5 and 1 <= max(broker_seen) <= 6, broker_seen  # never above prefetch
    assert "in flight at most " in out and int(out.split("in flight at most ")[1].split()[0]) <= 6, out
    warm = sampler.rss_after(300)
    assert len(warm) >= 10
    assert max(warm) - warm[0] < 40 * 1024 * 1024, (warm[0], max(warm))  # flat past the warm-up
    assert sampler.peak_rss < 400 * 1024 * 1024, sampler.peak_rss


def queue_depth(conn: Connection, queue: Queue) -> int:
    return int(queue(conn.default_channel).queue_declare(passive=True).message_count)


@pytest.mark.parametrize("declared", ["by the consumer", "without a delivery limit"])
def test_a_message_that_kills_its_consumer_is_dead_lettered_after_its_deliveries(
    setup: dict[str, Any], declared: str
) -> None:
    """SIGKILL the consumer while the poison message runs, on each delivery: after the third
    (`--max-deliveries 3`) RabbitMQ dead-letters it (the queue's `x-delivery-limit`), or, on a
    queue declared before without that limit, the next consumer refuses it on arrival."""
    from datetime import timedelta

    from django.utils import timezone

    from executions import housekeeping

    limited = declared == "by the consumer"
    queue = work_queue(3) if limited else Queue("dspex_executions", durable=True, queue_arguments=QUORUM)
    sim = setup["sim"]
    sim.configure(latency_ms=30_000)  # every call hangs: the message is in flight until the kill
    with Connection(URL) as conn:
        body = {"program": "qa-ingest", "input": {"question": "kills"}, "message_id": "poison-kill"}
        queue(conn.default_channel).declare()
        publish(conn, body)
        for delivery in range(1, 4):
            calls = sim.requests()
            consumer = setup["consumer"]("--max-deliveries", "3")
            wait_for(lambda calls=calls: sim.requests() > calls, 30, f"delivery {delivery}'s LM call")
            consumer.proc.kill()
            consumer.proc.wait()
            # The reaper puts the killed run back to pending, so the next delivery runs it again.
            housekeeping.reap(now=timezone.now() + timedelta(seconds=120))
        # The queue goes on: the next message runs; the poison one does not run a fourth time.
        sim.configure(latency_ms=0)
        calls = sim.requests()
        consumer = setup["consumer"]("--max-deliveries", "3")
        replies = reply_queue(conn)
        publish(conn, {"program": "qa-ingest", "input": {"question": "after"}}, reply_to=replies.name)
        assert json.loads(take(conn, replies).body)["status"] == "succeeded"
        letter = take(conn, DEAD, timeout=20)
        assert queue_depth(conn, queue) == 0 and queue_depth(conn, DEAD) == 0
    assert json.loads(letter.body) == body  # the original body, unchanged
    if limited:
        assert letter.headers["x-first-death-reason"] == "delivery_limit"
        assert letter.headers["x-first-death-queue"] == "dspex_executions"
    else:
        assert "exists with other arguments" in consumer.started
        assert letter.headers["x-dspex-error-code"] == "delivery_limit"
        assert letter.headers["x-dspex-deliveries"] == 3
        assert "Delivered 3 times" in json.loads(letter.headers["x-dspex-error"])["detail"]
    consumer.stop()
    assert f"messages taken {1 if limited else 2}," in consumer.output()
    assert sim.requests() == calls + 1  # only "after"'s call
    assert CognitiveExecution.objects.filter(input={"question": "kills"}).count() == 1


@pytest.fixture
def raising_input() -> Iterator[str]:
    """A Postgres trigger that refuses to store an execution whose input holds a marker: that
    message's processing raises on every delivery (a real database error, not a stub)."""
    from django.db import connection

    marker = "poison-raises"
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION qa_poison() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.input::text LIKE '%{marker}%' THEN RAISE EXCEPTION 'qa poison input refused'; "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER qa_poison BEFORE INSERT ON cognitive_executions "
            "FOR EACH ROW EXECUTE FUNCTION qa_poison()"
        )
    yield marker
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS qa_poison ON cognitive_executions")
        cursor.execute("DROP FUNCTION IF EXISTS qa_poison()")


def test_a_message_whose_processing_raises_is_dead_lettered_with_its_error(
    setup: dict[str, Any], raising_input: str
) -> None:
    consumer = setup["consumer"]("--max-deliveries", "3", "--concurrency", "2")
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        poison = {"program": "qa-ingest", "input": {"question": raising_input}, "message_id": "raises-1"}
        publish(conn, poison, reply_to=replies.name, correlation_id="p")
        publish(conn, {"program": "qa-ingest", "input": {"question": "fine"}}, reply_to=replies.name)
        answers = [take(conn, replies, timeout=40) for _ in range(2)]
        letter = take(conn, DEAD, timeout=10)
        assert queue_depth(conn, work_queue(3)) == 0
    by_correlation = {m.properties.get("correlation_id"): json.loads(m.body) for m in answers}
    assert by_correlation[None]["status"] == "succeeded"  # the other message is not held up
    error = by_correlation["p"]
    assert error["code"] == "delivery_limit"
    assert "3 deliveries" in error["detail"] and "qa poison input refused" in error["detail"]
    assert json.loads(letter.headers["x-dspex-error"]) == error
    assert letter.headers["x-dspex-error-code"] == "delivery_limit"
    assert letter.headers["x-dspex-deliveries"] == 3
    assert json.loads(letter.body) == poison
    assert not IngestedMessage.objects.filter(pk="raises-1").exists()
    consumer.stop()
    assert "messages taken 4," in consumer.output()  # the poison one 3 times, "fine" once


@pytest.fixture
def flaky_database() -> Iterator[str]:
    """A Postgres trigger that fails the first three inserts of a marked execution with SQLSTATE
    08006 (connection failure: Django's OperationalError, as a database restart gives)."""
    from django.db import connection

    marker = "flaky-db"
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE qa_flaky_seq")
        cursor.execute(
            "CREATE FUNCTION qa_flaky() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.input::text LIKE '%{marker}%' AND nextval('qa_flaky_seq') <= 3 THEN "
            "RAISE EXCEPTION 'qa database going away' USING ERRCODE = '08006'; "
            "END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER qa_flaky BEFORE INSERT ON cognitive_executions "
            "FOR EACH ROW EXECUTE FUNCTION qa_flaky()"
        )
    yield marker
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS qa_flaky ON cognitive_executions")
        cursor.execute("DROP FUNCTION IF EXISTS qa_flaky()")
        cursor.execute("DROP SEQUENCE IF EXISTS qa_flaky_seq")


def test_a_database_outage_is_retried_without_spending_deliveries(
    setup: dict[str, Any], flaky_database: str
) -> None:
    """Three database failures in a row on a message allowed two deliveries: it is held and
    retried (not requeued), so it still runs, once, on its first delivery."""
    consumer = setup["consumer"]("--max-deliveries", "2")
    with Connection(URL) as conn:
        replies = reply_queue(conn)
        body = {"program": "qa-ingest", "input": {"question": flaky_database}, "message_id": "flaky-1"}
        publish(conn, body, reply_to=replies.name)
        result = json.loads(take(conn, replies, timeout=60).body)
        assert queue_depth(conn, DEAD) == 0
    assert result["status"] == "succeeded"
    assert CognitiveExecution.objects.count() == 1
    consumer.stop()
    out = consumer.output()
    assert out.count("OperationalError: qa database going away") == 3, out
    assert "messages taken 1," in out  # one delivery: never put back


def run_consume(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "dspex_consume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_an_amqp_url_it_refuses_to_start_naming_the_setting() -> None:
    env = process_env(CELERY_BROKER_URL="redis://localhost:6379/15", DSPEX_CONSUME_KEY="x")
    env.pop("DSPEX_AMQP_URL", None)
    done = run_consume(env)
    assert done.returncode != 0 and "DSPEX_AMQP_URL" in done.stderr


def test_a_key_without_the_execute_scope_is_refused_at_start_up(vhost: str) -> None:
    key = KeyFactory(service=True, project=default_project(), scopes=["read"])
    done = run_consume(process_env(DSPEX_AMQP_URL=URL, DSPEX_CONSUME_KEY=key.key))
    assert done.returncode != 0 and "`execute` scope" in done.stderr
    done = run_consume(process_env(DSPEX_AMQP_URL=URL, DSPEX_CONSUME_KEY="dsx_nope"))
    assert done.returncode != 0 and "not a valid API key" in done.stderr


def test_make_run_starts_the_consumer_only_with_amqp_and_a_key() -> None:
    from dspex_site.launch import worker_commands

    assert "consume" not in worker_commands({"CELERY_BROKER_URL": "redis://localhost:6379/0"})
    assert "consume" not in worker_commands({"DSPEX_AMQP_URL": URL})  # no key: said, not started
    assert "consume" in worker_commands({"DSPEX_AMQP_URL": URL, "DSPEX_CONSUME_KEY": "k"})
    assert "consume" in worker_commands({"CELERY_BROKER_URL": URL, "DSPEX_CONSUME_KEY": "k"})


def test_stopping_mid_backlog_exits_cleanly_and_loses_nothing(setup: dict[str, Any]) -> None:
    """SIGTERM while a backlog streams in, whatever is in flight at that instant (often nothing:
    fast runs at prefetch 1): the consumer cancels, finishes, prints its summary and exits 0;
    every message is either stored or still queued. Stopped several times over one backlog."""
    setup["sim"].configure(latency_ms=0)
    with Connection(URL) as conn:
        work_queue()(conn.default_channel).declare()
        for n in range(400):
            publish(conn, {"program": "qa-ingest", "input": {"question": f"s{n}"}, "message_id": f"s-{n}"})
    for _ in range(4):
        before = CognitiveExecution.objects.count()
        consumer = setup["consumer"]("--concurrency", "1", "--prefetch", "1")
        wait_for(lambda b=before: CognitiveExecution.objects.count() >= b + 5, 60, "the consumer to run some")
        consumer.stop()
        out = consumer.output()
        assert consumer.proc.returncode == 0 and "dspex_consume: stopped" in out, out
    with Connection(URL) as conn:
        queued = queue_depth(conn, work_queue())
    assert CognitiveExecution.objects.count() + queued == 400
    assert IngestedMessage.objects.count() == CognitiveExecution.objects.count()
