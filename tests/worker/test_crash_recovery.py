"""A worker killed with SIGKILL mid-execution: another worker finishes the execution, once.

With Redis as broker the killed worker's unacknowledged message only comes back after the
visibility timeout (5 h, longer than an optimization may run), so recovery comes from the
execution's heartbeat going stale and the reaper (run by beat on `cleanup`) re-queueing it.
"""

import pytest

from dspex_site.beat import sync_schedules
from executions.models import CognitiveExecution
from tests.support import process_env, sim_env, start_beat, start_worker, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.broker]

FAST_RECOVERY = {"DSPEX_HEARTBEAT_S": "1", "DSPEX_HEARTBEAT_STALE_S": "5"}


def test_a_killed_worker_s_execution_succeeds_exactly_once_on_another_worker(
    api, make_program, transactional_db, simlm, settings, tmp_path
):
    simlm.reset()
    simlm.configure(latency_ms=4000)
    settings.DSPEX_REAP_INTERVAL_S = 2
    sync_schedules()
    env = sim_env(simlm, **FAST_RECOVERY)
    first = start_worker(queues="llm_calls,priority", env=env, name="doomed")
    survivor = beat = None
    try:
        program = make_program()
        response = api.post(
            f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "crash?"}}, format="json"
        )
        assert response.status_code == 202
        execution_id = response.json()["id"]
        running = wait_for(
            lambda: CognitiveExecution.objects.filter(id=execution_id, status="running").first(),
            30,
            "the first worker to start the execution",
        )
        first.kill()  # mid-LM-call: the provider takes 4 s to answer

        survivor = start_worker(queues="llm_calls,priority,cleanup", env=env, name="survivor")
        beat = start_beat(process_env(**env), tmp_path)
        execution = wait_for(
            lambda: CognitiveExecution.objects.filter(
                id=execution_id, status__in=["succeeded", "failed"]
            ).first(),
            120,
            "the execution to finish on the surviving worker",
            interval=0.5,
        )
    finally:
        if first.proc.poll() is None:
            first.kill()
        if beat is not None:
            stop(beat)
        if survivor is not None:
            survivor.stop()
        simlm.reset()

    assert execution.status == "succeeded", execution.errors
    assert CognitiveExecution.objects.filter(program=program).count() == 1
    assert execution.attempts == 2
    assert [e["type"] for e in execution.errors] == ["worker_lost"]
    assert running.worker and running.worker in execution.errors[0]["message"]
    assert execution.worker != running.worker and execution.started_at > running.started_at
    # The trace is the surviving run's alone: one step, one LM call.
    assert [e["kind"] for e in execution.trace] == ["module", "lm"]
