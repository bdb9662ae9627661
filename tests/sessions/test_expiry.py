"""Expired sessions are pruned by a beat task on `cleanup`; their turns stay as executions and
follow the executions' own retention, which keeps a live session's turns."""

from datetime import timedelta

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from dspex_site.beat import sync_schedules
from dspex_site.celery import TASKS, app
from executions import housekeeping, sessions
from executions.models import CognitiveExecution, Session
from executions.tasks import prune_sessions_task
from tests.factories import ExecutionFactory, SessionFactory

pytestmark = pytest.mark.django_db


def expired(**fields: object) -> Session:
    return SessionFactory(expires_at=timezone.now() - timedelta(seconds=1), **fields)


def test_pruning_deletes_expired_sessions_only_and_keeps_their_turns():
    gone, live = expired(), SessionFactory()
    kept_turn = ExecutionFactory(program=gone.program, session=gone, turn=1, finished=True)
    assert sessions.prune() == (1, False)
    assert list(Session.objects.values_list("id", flat=True)) == [live.id]
    kept_turn.refresh_from_db()
    assert kept_turn.session_id is None and kept_turn.turn == 1


def test_pruning_works_in_bounded_chunks(settings):
    settings.DSPEX_PRUNE_BATCH_SIZE = 2
    for _ in range(3):
        expired()
    assert sessions.prune() == (2, True)
    assert sessions.prune() == (1, False)
    assert not Session.objects.exists()


def test_the_prune_task_deletes_expired_sessions():
    expired()
    assert prune_sessions_task.apply().get() == 1
    assert not Session.objects.exists()


def test_the_execution_retention_spares_a_live_session_s_turns(settings):
    old = timezone.now() - timedelta(days=settings.DSPEX_EXECUTION_RETENTION_DAYS + 1)
    session = SessionFactory()
    live_turn = ExecutionFactory(
        program=session.program, session=session, turn=1, finished=True, created_at=old
    )
    orphan = ExecutionFactory(program=session.program, finished=True, created_at=old)
    assert housekeeping.prune() == (1, False)
    assert list(CognitiveExecution.objects.values_list("id", flat=True)) == [live_turn.id]
    Session.objects.filter(id=session.id).update(expires_at=timezone.now())
    sessions.prune()
    assert housekeeping.prune() == (1, False)  # its session gone, the turn is an old execution
    assert not CognitiveExecution.objects.filter(id__in=[live_turn.id, orphan.id]).exists()


def test_the_session_prune_runs_on_beat_on_the_cleanup_queue():
    wiring = TASKS["executions.prune_sessions"]
    sync_schedules()
    row = PeriodicTask.objects.get(name=wiring.schedule_name)
    assert (row.task, row.queue, row.enabled) == ("executions.prune_sessions", "cleanup", True)
    assert row.interval is not None and row.interval.every == 300
    assert app.amqp.router.route({}, "executions.prune_sessions")["queue"].name == "cleanup"
