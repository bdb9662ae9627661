"""Retry policy on a real worker against the simulated provider over HTTP."""

import pytest
import requests

from executions.models import CognitiveExecution
from tests.support import sim_env, start_worker, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
def sim_worker(transactional_db, simlm):
    simlm.reset()
    requests.post(f"http://127.0.0.1:{simlm.port}/_sim/reset", timeout=5).raise_for_status()
    worker = start_worker(
        queues="llm_calls,priority",
        env=sim_env(simlm, DSPEX_RETRY_BACKOFF_BASE_S="0.05", DSPEX_HEARTBEAT_S="1"),
    )
    yield simlm
    worker.stop()
    simlm.reset()


def submit(api, program, question: str) -> str:
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": question}, "cache": False},
        format="json",
    )
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def finished(execution_id: str) -> CognitiveExecution | None:
    execution = CognitiveExecution.objects.get(id=execution_id)
    return execution if execution.is_finished else None


def test_transient_errors_retry_with_backoff_up_to_five_attempts(api, make_program, sim_worker):
    sim_worker.configure(error_rate=1.0)
    execution_id = submit(api, make_program(), "always 5xx?")
    execution = wait_for(lambda: finished(execution_id), 60, "the execution to give up")
    assert execution.status == "failed" and execution.error["type"] == "provider_error"
    assert execution.attempts == 5
    assert [e["type"] for e in execution.errors] == ["provider_error"] * 5
    # Backoff doubles: base 0.05 s * 2^n for n = 1..4.
    assert [e.get("retry_in_s") for e in execution.errors[:4]] == [0.1, 0.2, 0.4, 0.8]
    # One provider request per attempt: DSPy does not retry underneath the task (num_retries=0).
    assert sim_worker.stats()["requests"] == 5


def test_a_rate_limited_execution_is_requeued_without_spending_an_attempt(api, make_program, sim_worker):
    sim_worker.configure(rate_limit_rate=1.0, retry_after_s=1)
    execution_id = submit(api, make_program(), "rate limited?")

    def refused_twice() -> bool:
        errors = CognitiveExecution.objects.get(id=execution_id).errors
        return sum(e["type"] == "rate_limited" for e in errors) >= 2

    wait_for(refused_twice, 30, "two 429s to be recorded")
    sim_worker.configure(rate_limit_rate=0)
    execution = wait_for(lambda: finished(execution_id), 30, "the execution to succeed")
    assert execution.status == "succeeded", execution.error
    assert execution.attempts == 1 and execution.output["answer"]
    assert all(e["type"] == "rate_limited" and e["retry_in_s"] == 1 for e in execution.errors)


def test_a_permanent_error_fails_at_once(api, make_program, sim_worker):
    sim_worker.configure(malformed_rate=1.0)
    execution_id = submit(api, make_program(), "gibberish?")
    execution = wait_for(lambda: finished(execution_id), 30, "the execution to fail")
    assert execution.status == "failed" and execution.error["type"] == "unparseable_response"
    assert execution.attempts == 1 and len(execution.errors) == 1
