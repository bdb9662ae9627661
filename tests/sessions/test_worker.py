"""Queued turns run by a real Celery worker fill the history exactly as waited ones do, and a
turn whose process died mid-run leaves the session consistent: busy until the executions'
reaper recovers the turn (re-run by a worker, or failed once its attempts are spent), then
usable again with the right numbering and history."""

from datetime import timedelta

import pytest
from django.utils import timezone

from dspex_site.beat import sync_schedules
from executions import housekeeping
from executions.models import CognitiveExecution
from tests.sessions.conftest import turn
from tests.support import process_env, sim_env, start_beat, start_worker, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("transactional_db")]


def finished(execution_id: str) -> CognitiveExecution:
    return wait_for(
        lambda: CognitiveExecution.objects.filter(
            id=execution_id, status__in=CognitiveExecution.FINISHED
        ).first(),
        30,
        f"execution {execution_id} to finish",
    )


def test_queued_and_waited_turns_share_one_history(api, open_session, worker):
    session = open_session()
    queued = turn(api, session, "queued first?", wait=False)
    assert queued.status_code == 202, queued.content
    body = queued.json()
    assert (body["session"], body["turn"], body["status"]) == (session["id"], 1, "pending")
    first = finished(body["id"])
    assert first.status == "succeeded", first.error
    assert first.worker.endswith(f":{worker.proc.pid}")  # run by the worker process, not in the test

    waited = turn(api, session, "waited second?").json()
    assert waited["turn"] == 2
    assert waited["input"]["history"]["messages"] == [{"question": "queued first?", **first.output}]

    third = turn(api, session, "queued third?", wait=False).json()
    done = finished(third["id"])
    assert done.status == "succeeded" and done.turn == 3
    history = api.get(f"/api/v1/sessions/{session['id']}/").json()["history"]
    assert done.input["history"]["messages"] == [{**t["input"], **t["output"]} for t in history[:2]]
    assert [t["turn"] for t in history] == [1, 2, 3]


def crash(execution_id: str, attempts: int = 1) -> None:
    """What a process killed mid-turn leaves: a running row whose heartbeat stopped long ago."""
    long_ago = timezone.now() - timedelta(minutes=10)
    CognitiveExecution.objects.filter(id=execution_id).update(
        status="running",
        attempts=attempts,
        worker="dead-host:4242",
        started_at=long_ago,
        heartbeat_at=long_ago,
    )


def test_a_crashed_turn_is_rerun_by_a_worker_and_the_session_goes_on(api, open_session, worker):
    session = open_session()
    worker.stop()  # the turn must not run before it "crashes"
    lost = turn(api, session, "interrupted?", wait=False).json()
    crash(lost["id"])
    busy = turn(api, session, "too soon?")
    assert busy.status_code == 409 and busy.json()["code"] == "session_busy"
    assert api.get(f"/api/v1/sessions/{session['id']}/").json()["busy"] is True

    survivor = start_worker()
    try:
        assert housekeeping.reap()["requeued_lost"] == 1
        recovered = finished(lost["id"])
    finally:
        survivor.stop()
    assert recovered.status == "succeeded" and recovered.turn == 1 and recovered.attempts == 2
    assert [e["type"] for e in recovered.errors] == ["worker_lost"]
    # Usable again, numbered after the recovered turn, with it in the history.
    response = turn(api, session, "and now?")
    assert response.status_code == 200, response.content
    assert response.json()["turn"] == 2
    assert [m["question"] for m in response.json()["input"]["history"]["messages"]] == ["interrupted?"]


def test_a_crashed_turn_out_of_attempts_fails_and_its_number_is_taken_again(api, open_session, settings):
    session = open_session()
    lost = turn(api, session, "interrupted?", wait=False).json()
    crash(lost["id"], attempts=settings.DSPEX_MAX_ATTEMPTS)
    assert turn(api, session, "too soon?").status_code == 409
    assert housekeeping.reap()["requeued_lost"] == 0
    assert CognitiveExecution.objects.get(id=lost["id"]).status == "failed"
    body = api.get(f"/api/v1/sessions/{session['id']}/").json()
    assert (body["busy"], body["turns"], body["history"]) == (False, 0, [])
    again = turn(api, session, "again?").json()
    assert again["turn"] == 1 and again["status"] == "succeeded"
    assert again["input"]["history"] == {"messages": []}


@pytest.mark.slow
def test_a_worker_killed_mid_turn_leaves_the_session_usable(api, open_session, simlm, settings, tmp_path):
    """The real thing: SIGKILL while the provider is answering; beat's reaper hands the turn to
    a surviving worker, and the session carries on from it."""
    simlm.reset()
    simlm.configure(latency_ms=4000)
    settings.DSPEX_REAP_INTERVAL_S = 2
    sync_schedules()
    env = sim_env(simlm, DSPEX_HEARTBEAT_S="1", DSPEX_HEARTBEAT_STALE_S="5")
    doomed = start_worker(queues="llm_calls,priority", env=env, name="doomed")
    survivor = beat = None
    try:
        session = open_session()
        queued = turn(api, session, "interrupted?", wait=False).json()
        wait_for(
            lambda: CognitiveExecution.objects.filter(id=queued["id"], status="running").first(),
            30,
            "the doomed worker to start the turn",
        )
        doomed.kill()
        assert turn(api, session, "too soon?").json()["code"] == "session_busy"
        simlm.configure(latency_ms=0)
        survivor = start_worker(queues="llm_calls,priority,cleanup", env=env, name="survivor")
        beat = start_beat(process_env(**env), tmp_path)
        recovered = wait_for(
            lambda: CognitiveExecution.objects.filter(
                id=queued["id"], status__in=CognitiveExecution.FINISHED
            ).first(),
            120,
            "the turn to finish on the surviving worker",
            interval=0.5,
        )
    finally:
        if doomed.proc.poll() is None:
            doomed.kill()
        if beat is not None:
            stop(beat)
        if survivor is not None:
            survivor.stop()
        simlm.reset()
    assert recovered.status == "succeeded" and [e["type"] for e in recovered.errors] == ["worker_lost"]
    assert CognitiveExecution.objects.filter(session_id=session["id"]).count() == 1
    after = turn(api, session, "and now?").json()
    assert after["turn"] == 2
    assert after["input"]["history"]["messages"] == [{"question": "interrupted?", **recovered.output}]
