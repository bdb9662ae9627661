"""Celery wiring in one place: every task has a route and limits, every route a task, beat rows
synced from the same table by one idempotent path, and domain code never imports a tasks module."""

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from dspex_site import broker
from dspex_site.beat import sync_schedules
from dspex_site.celery import TASKS, app
from executions.models import CognitiveExecution
from tests.support import database_url_of_tests, process_env

ROOT = Path(__file__).resolve().parents[2]
SCHEDULED = {w.schedule_name: name for name, w in TASKS.items() if w.schedule is not None}


def project_tasks() -> set[str]:
    app.loader.import_default_modules()  # what a worker registers at start
    return {name for name in app.tasks if not name.startswith("celery.")}


def test_every_route_names_a_registered_task_and_every_task_is_wired():
    registered = project_tasks()
    routes = app.conf.task_routes
    assert set(routes) == set(TASKS) == registered
    for name, wiring in TASKS.items():
        assert routes[name] == {"queue": wiring.queue.value}
        assert app.amqp.router.route({}, name)["queue"].name == wiring.queue.value
        task = app.tasks[name]
        assert 0 < task.soft_time_limit < task.time_limit, name
        assert (task.soft_time_limit, task.time_limit) == (wiring.soft_s, wiring.hard_s)
    assert app.tasks["optimization.run"].max_retries == 2
    assert app.tasks["caching.embed_corpus"].max_retries == 3


@pytest.mark.django_db
def test_migrate_created_every_scheduled_task_s_beat_row():
    # No sync called here: post_migrate did it when the test database was created (or flushed).
    rows = {t.name: t for t in PeriodicTask.objects.filter(name__in=SCHEDULED)}
    assert set(rows) == set(SCHEDULED)
    for name, row in rows.items():
        assert row.task == SCHEDULED[name] and row.queue == TASKS[row.task].queue.value and row.enabled


@pytest.mark.django_db
def test_syncing_twice_changes_nothing_and_a_drifted_row_is_put_back(settings):
    PeriodicTask.objects.filter(name__in=SCHEDULED).delete()
    first = sync_schedules()
    assert set(first.values()) == {"created"} and set(first) == set(SCHEDULED)
    before = {
        t.name: (t.date_changed, t.interval_id, t.crontab_id, t.queue) for t in PeriodicTask.objects.all()
    }
    last_update = PeriodicTasks.last_change()
    assert set(sync_schedules().values()) == {"unchanged"}
    after = {
        t.name: (t.date_changed, t.interval_id, t.crontab_id, t.queue) for t in PeriodicTask.objects.all()
    }
    assert after == before and PeriodicTasks.last_change() == last_update  # beat is not told to reload

    reap = TASKS["executions.reap"].schedule_name
    PeriodicTask.objects.filter(name=reap).update(queue="default", enabled=False)
    settings.DSPEX_REAP_INTERVAL_S = 7
    changed = sync_schedules()
    assert changed[reap] == "updated" and {v for k, v in changed.items() if k != reap} == {"unchanged"}
    row = PeriodicTask.objects.get(name=reap)
    assert (row.queue, row.enabled, row.interval.every, row.interval.period) == (
        "cleanup",
        True,
        7,
        IntervalSchedule.SECONDS,
    )


def test_domain_modules_never_import_a_tasks_module():
    """Tasks are thin and import the domain; the reverse (even inside a function) would be the
    old executions.tasks ↔ batches ↔ housekeeping cycle again. Entry points (API views, the
    console, commands) sit beside the tasks and may use them."""
    entry_points = {"tasks.py", "api.py", "admin.py"}
    offenders = []
    for app_dir in ("executions", "optimization", "programs", "caching", "monitoring", "llm", "dspex_site"):
        for path in (ROOT / app_dir).rglob("*.py"):
            if (
                path.name in entry_points
                or path.name.endswith("_api.py")
                or {"migrations", "management"} & set(path.parts)
            ):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.endswith(".tasks")]
    assert offenders == []


@pytest.mark.django_db
def test_domain_code_publishes_through_the_wiring(make_program, monkeypatch):
    sent = []
    project_tasks()
    task = app.tasks["executions.run"]
    monkeypatch.setattr(task, "apply_async", lambda **kw: sent.append(kw))
    program = make_program()
    normal = CognitiveExecution.objects.create(program=program, program_version=1, input={"question": "q"})
    high = CognitiveExecution.objects.create(
        program=program, program_version=1, input={"question": "q"}, priority="high"
    )
    normal.publish()
    high.publish(countdown=2.5)
    assert sent == [
        {"args": [str(normal.id)], "countdown": None, "queue": "llm_calls"},
        {"args": [str(high.id)], "countdown": 2.5, "queue": "priority"},
    ]


# A fresh process whose threads publish their first task at the same moment, as a web worker's
# threads do after a restart; apply_async is replaced, so nothing reaches a broker.
CONCURRENT_FIRST_PUBLISH = """
import threading
import django

django.setup()
from celery.app.task import Task

from dspex_site.celery import app, publish

Task.apply_async = lambda self, **kw: None
assert "executions.run" not in app.tasks  # nothing imported the tasks modules yet
start, errors = threading.Barrier(16), []


def first_publish():
    start.wait()
    try:
        publish("executions.run", "00000000-0000-0000-0000-000000000000")
    except Exception as exc:
        errors.append(repr(exc))


threads = [threading.Thread(target=first_publish) for _ in range(16)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(len(errors), errors[:1])
"""


def test_threads_publishing_their_first_task_at_once_all_find_it():
    for _ in range(3):  # the race lost most rounds before the fix; three rounds for good measure
        done = subprocess.run(
            [sys.executable, "-c", CONCURRENT_FIRST_PUBLISH],
            env=process_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1] == "0 []"


def _around_one_task() -> None:
    """What the worker's Django fixup does around each task (task_prerun, then task_postrun)."""
    fixup = app._fixups[0].worker_fixup
    sender = SimpleNamespace(request=SimpleNamespace(is_eager=False))
    fixup.on_task_prerun(sender=sender)
    fixup.on_task_postrun(sender=sender)


def test_a_worker_thread_keeps_its_database_connection_from_task_to_task(transactional_db):
    CognitiveExecution.objects.exists()
    before = connection.connection
    _around_one_task()
    CognitiveExecution.objects.exists()
    assert before is not None and connection.connection is before


def test_a_worker_thread_drops_a_connection_the_database_has_closed(transactional_db):
    CognitiveExecution.objects.exists()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        old_pid = cursor.fetchone()[0]
    with psycopg.connect(database_url_of_tests(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [old_pid])
    _around_one_task()
    with connection.cursor() as cursor:  # the health check found it dead: a new connection
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != old_pid


def test_the_redis_broker_channel_keeps_one_client_until_its_pool_changes():
    with app.connection_for_write() as conn:
        # Ours for a Redis broker, directly or through Sentinel (REDIS_SENTINELS: the same channel).
        assert isinstance(conn.transport, (broker.Transport, broker.SentinelTransport))
        channel = conn.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second and first.connection_pool is channel.pool
            assert first.ping()
        channel._disconnect_pools()  # as after a fork
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
