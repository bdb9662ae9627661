"""The one job lifecycle (dspex_site.jobs) as both job models use it: claim, fenced writes, the
process heartbeat and the reaper."""

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from dspex_site import jobs
from executions.models import CognitiveExecution
from optimization.models import Dataset, OptimizationRun

pytestmark = pytest.mark.django_db


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def execution(program, **fields) -> CognitiveExecution:
    return CognitiveExecution.objects.create(
        program=program, program_version=1, input={"question": "q"}, **fields
    )


def run(program, **fields) -> OptimizationRun:
    dataset, _ = Dataset.objects.get_or_create(name="jobs")
    return OptimizationRun.objects.create(
        program=program,
        program_version=1,
        dataset=dataset,
        optimizer="LabeledFewShot",
        metric="exact_match",
        **fields,
    )


def test_both_models_claim_once_with_one_worker_identity(make_program):
    program = make_program()
    pending_execution, pending_run = execution(program), run(program)
    started_at = CognitiveExecution.objects.claim(pending_execution.id)
    assert started_at is not None and CognitiveExecution.objects.claim(pending_execution.id) is None
    assert OptimizationRun.objects.claim(pending_run.id) == 1
    assert OptimizationRun.objects.claim(pending_run.id) is None  # running, heartbeat fresh
    rows = [
        CognitiveExecution.objects.get(id=pending_execution.id),
        OptimizationRun.objects.get(id=pending_run.id),
    ]
    assert {r.worker for r in rows} == {jobs.worker_name()}
    assert [(r.status, r.attempts) for r in rows] == [("running", 1), ("running", 1)]
    assert rows[0].started_at == started_at == rows[0].heartbeat_at


def test_a_run_whose_worker_went_silent_is_taken_over_keeping_its_first_start(make_program, settings):
    settings.DSPEX_OPTIMIZATION_STALE_S = 30
    program = make_program()
    first_start = ago(3600)
    silent = run(program, status="running", attempts=1, started_at=first_start, heartbeat_at=ago(31))
    assert OptimizationRun.objects.claim(silent.id) == 2
    silent.refresh_from_db()
    assert (silent.attempts, silent.started_at) == (2, first_start)  # the time limit covers all attempts
    spent = run(program, status="running", attempts=3, max_attempts=3, heartbeat_at=ago(99))
    assert OptimizationRun.objects.claim(spent.id) is None


def test_writes_are_fenced_by_the_claim_for_both_models(make_program):
    program = make_program()
    first = execution(program)
    first.refresh_claimed(CognitiveExecution.objects.claim(first.id))
    # The reaper gave up on that worker and another claimed the row: a new started_at.
    CognitiveExecution.objects.filter(id=first.id).update(status="pending")
    replacement = CognitiveExecution.objects.claim(first.id)
    first.finish("succeeded", output={"answer": "stale"})
    stored = CognitiveExecution.objects.get(id=first.id)
    assert (stored.status, stored.output, stored.started_at) == ("running", None, replacement)
    assert first.claim_token != replacement  # reloading the row did not hand it the new claim
    first.finish("succeeded", output={"answer": "still stale"})
    assert CognitiveExecution.objects.get(id=first.id).output is None

    attempt_one = run(program)
    attempt_one.hold(OptimizationRun.objects.claim(attempt_one.id))
    OptimizationRun.objects.filter(id=attempt_one.id).update(status="pending")
    assert OptimizationRun.objects.claim(attempt_one.id) == 2
    assert attempt_one.beat({"phase": "zombie"}) is False
    assert attempt_one.finish("succeeded", message="zombie") is False
    stored_run = OptimizationRun.objects.get(id=attempt_one.id)
    assert (stored_run.status, stored_run.progress, stored_run.message) == ("running", {}, "")


def test_one_heartbeat_update_per_model_refreshes_every_held_row_and_reports_lost_ones(make_program):
    program = make_program()
    beat = jobs.Heartbeat()
    held = []
    for _ in range(5):
        row = execution(program)
        row.refresh_claimed(CognitiveExecution.objects.claim(row.id))
        held.append(beat.hold(row))
    CognitiveExecution.objects.filter(id__in=[h.job.id for h in held]).update(heartbeat_at=ago(60))
    with CaptureQueriesContext(connection) as queries:
        assert beat.beat(CognitiveExecution) == 5
    assert len(queries) == 1 and queries[0]["sql"].startswith("UPDATE")
    assert not CognitiveExecution.objects.filter(heartbeat_at__lt=ago(5)).exists()

    events = []
    mine, taken = run(program), run(program)
    holdings = []
    for job in (mine, taken):
        job.hold(OptimizationRun.objects.claim(job.id))
        holdings.append(
            beat.hold(
                job,
                on_lost=lambda j=job: events.append(("lost", j.id)),
                on_beat=lambda j=job: events.append(("beat", j.id)),
            )
        )
    OptimizationRun.objects.filter(id=taken.id).update(attempts=2)  # taken over by another worker
    assert beat.beat(OptimizationRun) == 1
    assert beat.beat(OptimizationRun) == 1  # a lost row is reported once, then left alone
    assert events == [("beat", mine.id), ("lost", taken.id), ("beat", mine.id)]
    for holding in [*held, *holdings]:
        beat.release(holding)
    assert beat.held() == []


def test_the_reaper_releases_or_fails_lost_runs_and_leaves_live_ones(make_program, settings, monkeypatch):
    settings.DSPEX_OPTIMIZATION_STALE_S = 30
    published = []
    monkeypatch.setattr(OptimizationRun, "publish", lambda self, countdown=None: published.append(self.id))
    program = make_program()
    lost = run(program, status="running", attempts=1, heartbeat_at=ago(60), worker="gone:7")
    spent = run(program, status="running", attempts=3, max_attempts=3, heartbeat_at=ago(60), worker="gone:8")
    alive = run(program, status="running", attempts=1, heartbeat_at=ago(1))
    OptimizationRun.sync_program_status(program.id)
    assert jobs.reap_lost(OptimizationRun) == 1
    assert published == [lost.id]
    lost.refresh_from_db()
    spent.refresh_from_db()
    alive.refresh_from_db()
    assert (lost.status, lost.worker, lost.attempts) == ("pending", "", 1)
    assert spent.status == "failed" and spent.finished_at is not None
    assert spent.error["type"] == "worker_lost" and "gone:8" in spent.error["message"]
    assert "attempt 3 of 3" in spent.message
    assert alive.status == "running"
    program.refresh_from_db()
    assert program.status == "optimizing"  # the released run and the live one are in progress
    assert OptimizationRun.objects.claim(lost.id) == 2


def test_the_reaper_does_not_undo_a_worker_that_came_back(make_program, settings):
    settings.DSPEX_HEARTBEAT_STALE_S = 30
    program = make_program()
    row = execution(program, status="running", attempts=1, started_at=ago(60), heartbeat_at=ago(40))
    loaded = CognitiveExecution.objects.stale(30).get(id=row.id)
    CognitiveExecution.objects.filter(id=row.id).update(heartbeat_at=timezone.now())  # it beat just now
    loaded.fence_also(heartbeat_at__lt=ago(30))
    assert loaded.release(loaded.lost_error(30)) is False
    assert CognitiveExecution.objects.get(id=row.id).status == "running"


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_thread_beats_a_new_row_within_its_current_interval(make_program, settings):
    settings.DSPEX_OPTIMIZATION_HEARTBEAT_S = 300
    program = make_program()
    beat = jobs.Heartbeat()
    slow, fast = run(program), run(program)
    beats: list = []
    slow.hold(OptimizationRun.objects.claim(slow.id))
    first = beat.hold(slow)
    settings.DSPEX_OPTIMIZATION_HEARTBEAT_S = 0.2  # e.g. changed by a test or an operator
    fast.hold(OptimizationRun.objects.claim(fast.id))
    OptimizationRun.objects.filter(id__in=[slow.id, fast.id]).update(heartbeat_at=ago(60))
    second = beat.hold(fast, on_beat=lambda: beats.append(fast.id))
    try:
        deadline = time.monotonic() + 10
        while len(beats) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(beats) >= 2  # beaten by the thread, not 300 s later
        assert not OptimizationRun.objects.filter(heartbeat_at__lt=ago(5)).exists()  # both rows
    finally:
        beat.release(first)
        beat.release(second)
