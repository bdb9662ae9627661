"""Housekeeping: reaping stuck runs, pruning old ones in bounded chunks, beat schedules, config."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from dspex_site.beat import sync_schedules
from dspex_site.celery import TASKS, VISIBILITY_TIMEOUT_S, app
from executions import housekeeping
from executions.models import CognitiveExecution
from tests.factories import ExecutionFactory

pytestmark = pytest.mark.django_db


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def test_reaper_requeues_a_run_whose_worker_went_silent(make_program, settings):
    settings.DSPEX_HEARTBEAT_STALE_S = 30
    program = make_program()
    lost = ExecutionFactory(
        program=program,
        status="running",
        attempts=1,
        started_at=ago(60),
        heartbeat_at=ago(40),
        worker="gone:1",
    )
    alive = ExecutionFactory(
        program=program, status="running", attempts=1, started_at=ago(60), heartbeat_at=ago(5)
    )
    counts = housekeeping.reap()
    assert counts["requeued_lost"] == 1
    lost.refresh_from_db()
    alive.refresh_from_db()
    assert lost.status == "pending" and lost.attempts == 1
    assert lost.errors[0]["type"] == "worker_lost" and "gone:1" in lost.errors[0]["message"]
    assert alive.status == "running"


def test_reaper_fails_a_lost_run_that_used_all_its_attempts(make_program, settings):
    program = make_program()
    spent = ExecutionFactory(
        program=program,
        status="running",
        attempts=settings.DSPEX_MAX_ATTEMPTS,
        started_at=ago(99),
        heartbeat_at=ago(99),
    )
    housekeeping.reap()
    spent.refresh_from_db()
    assert spent.status == "failed" and spent.error["type"] == "worker_lost" and spent.finished_at


def test_reaper_fails_a_run_past_its_time_limit(make_program, settings):
    settings.DSPEX_EXECUTION_TIME_LIMIT_S = 60
    program = make_program()
    overdue = ExecutionFactory(
        program=program, status="running", attempts=1, started_at=ago(600), heartbeat_at=ago(1)
    )
    housekeeping.reap()
    overdue.refresh_from_db()
    assert overdue.status == "failed" and overdue.error["type"] == "time_limit_exceeded"
    assert "60 s" in overdue.error["message"]


def test_prune_deletes_old_finished_executions_in_bounded_chunks(make_program, settings):
    settings.DSPEX_EXECUTION_RETENTION_DAYS = 7
    settings.DSPEX_PRUNE_BATCH_SIZE = 2
    program = make_program()
    old = timezone.now() - timedelta(days=8)
    for status in ("succeeded", "failed", "cancelled"):
        ExecutionFactory(program=program, status=status, created_at=old)
    stuck_old = ExecutionFactory(program=program, status="running", created_at=old)
    recent = ExecutionFactory(program=program, status="succeeded")
    assert housekeeping.prune() == (2, True)
    assert housekeeping.prune() == (1, False)
    assert set(CognitiveExecution.objects.values_list("id", flat=True)) == {stuck_old.id, recent.id}


def test_metrics_show_the_database_size_and_rows_pruning_left_behind(make_program, settings, client):
    """The gauges `DSPexPruningBehind` reads: the oldest prunable row's creation time is exported
    while one exists, and gone once `prune` deleted it."""
    import re

    settings.DSPEX_EXECUTION_RETENTION_DAYS = 7
    program = make_program()
    old = timezone.now() - timedelta(days=9)
    ExecutionFactory(program=program, status="succeeded", created_at=old)
    ExecutionFactory(program=program, status="running", created_at=old - timedelta(days=1))  # not prunable
    ExecutionFactory(program=program, status="succeeded")

    def gauge(name: str) -> float | None:
        found = re.search(rf"^{name} (\S+)$", client.get("/metrics").content.decode(), flags=re.M)
        return float(found.group(1)) if found else None

    assert gauge("dspex_execution_retention_seconds") == 7 * 86400
    assert gauge("dspex_db_size_bytes") > 1_000_000
    assert gauge("dspex_execution_prune_overdue_oldest_timestamp_seconds") == pytest.approx(old.timestamp())
    assert housekeeping.prune() == (1, False)
    assert gauge("dspex_execution_prune_overdue_oldest_timestamp_seconds") is None


def test_housekeeping_beat_schedules_are_created_idempotently_on_the_cleanup_queue():
    names = {TASKS[t].schedule_name for t in ("executions.reap", "executions.prune", "executions.analyze")}
    sync_schedules()
    sync_schedules()
    tasks = PeriodicTask.objects.filter(name__in=names)
    assert {t.task for t in tasks} == {"executions.reap", "executions.prune", "executions.analyze"}
    assert tasks.count() == 3 and {t.queue for t in tasks} == {"cleanup"}


def test_analyze_refreshes_statistics_of_the_big_tables():
    assert "cognitive_executions" in housekeeping.analyze()


def test_celery_is_configured_for_safe_background_work():
    conf = app.conf
    assert {q.name for q in conf.task_queues} == {
        "default",
        "optimization",
        "llm_calls",
        "embeddings",
        "cleanup",
        "priority",
    }
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.broker_transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT_S > 4 * 3600
    route = app.amqp.router.route
    assert route({}, "executions.prune")["queue"].name == "cleanup"
    assert route({}, "executions.run")["queue"].name == "llm_calls"
    assert route({}, "optimization.run")["queue"].name == "optimization"
    for task in ("executions.run", "executions.reap", "executions.prune", "optimization.run"):
        limits = conf.task_annotations[task]
        assert 0 < limits["soft_time_limit"] < limits["time_limit"]
    assert conf.task_annotations["optimization.run"]["time_limit"] == 4 * 3600
