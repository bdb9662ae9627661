"""A queued execution is run by a real Celery worker."""

import time

import pytest

from executions.models import CognitiveExecution

pytestmark = pytest.mark.broker  # run on Redis and again on RabbitMQ


@pytest.mark.e2e
def test_a_queued_execution_is_run_by_a_worker(api, make_program, worker):
    program = make_program()
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "later?"}}, format="json"
    )
    assert response.status_code == 202
    execution_id = response.json()["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        execution = CognitiveExecution.objects.get(id=execution_id)
        if execution.is_finished:
            break
        time.sleep(0.2)
    assert execution.status == "succeeded", execution.error
    assert execution.output["answer"] and execution.attempts == 1
