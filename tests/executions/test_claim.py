"""The worker's claim: one conditional UPDATE … RETURNING, so a redelivered task never runs twice."""

import threading

import pytest
from django.db import connection

from executions import runner
from executions.models import CognitiveExecution
from executions.tasks import run_execution_task

pytestmark = pytest.mark.django_db(transaction=True)


def pending(make_program, **fields) -> CognitiveExecution:
    program = make_program(name=fields.pop("name", "claimed"))
    return runner.create_execution(program, {"question": "who wins?"}, **fields)


def test_claim_row_returns_the_running_row_decoded_with_its_program_name(make_program):
    execution = pending(make_program, name="claim-names")
    row = CognitiveExecution.objects.claim_row(execution.id)
    assert row is not None and row.id == execution.id
    assert row.status == "running" and row.attempts == 1 and row.worker
    assert row.input == {"question": "who wins?"}  # JSON decoded, as the ORM would
    assert row.started_at is not None and row.heartbeat_at == row.started_at
    assert row.program_name == "claim-names"
    stored = CognitiveExecution.objects.get(id=execution.id)
    assert (stored.status, stored.attempts, stored.started_at) == ("running", 1, row.started_at)
    # Nothing pending any more: a second claim (a redelivered message) gets nothing.
    assert CognitiveExecution.objects.claim_row(execution.id) is None


def test_concurrent_claims_have_exactly_one_winner(make_program):
    execution = pending(make_program)
    barrier = threading.Barrier(8)
    won: list = []

    def claim() -> None:
        try:
            barrier.wait()
            row = CognitiveExecution.objects.claim_row(execution.id)
            if row is not None:
                won.append(row)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert CognitiveExecution.objects.get(id=execution.id).attempts == 1


def test_a_redelivered_task_does_not_run_a_claimed_or_finished_execution(make_program, http_provider):
    execution = pending(make_program, use_cache=False)
    assert run_execution_task.run(str(execution.id)) == "succeeded"
    calls = http_provider.stats()["requests"]
    finished = CognitiveExecution.objects.get(id=execution.id)
    # The same message again (redelivery after a lost ack): no second run, no second LM call.
    assert run_execution_task.run(str(execution.id)) == "succeeded"
    assert http_provider.stats()["requests"] == calls
    again = CognitiveExecution.objects.get(id=execution.id)
    assert (again.attempts, again.finished_at, again.output) == (1, finished.finished_at, finished.output)


def test_a_message_for_a_deleted_execution_is_dropped(make_program):
    execution = pending(make_program)
    execution_id = str(execution.id)
    execution.delete()
    assert run_execution_task.run(execution_id) == "missing"
