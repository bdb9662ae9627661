"""Redis (the broker) goes away while executions are submitted: the API answers 503 with a
clear error, leaves no row pending, and queues normally again once Redis is back.

The test runs its own redis-server on a free port, and stops only that one.
"""

import time

import pytest
import requests

from executions.models import CognitiveExecution
from tests.factories import TokenFactory
from tests.support import RedisServer, process_env, start_web, start_worker_process, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_the_api_answers_503_while_the_broker_is_down_and_recovers(make_program, operator, transactional_db):
    token = TokenFactory(user=operator)
    program = make_program()
    server = RedisServer()
    env = process_env(REDIS_URL=server.url, CELERY_BROKER_URL=server.url)
    web, base = start_web(env)
    worker = start_worker_process(env)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token.key}"

    def execute(question: str) -> requests.Response:
        url = f"{base}/api/v1/programs/{program.id}/execute/"
        return session.post(url, json={"input": {"question": question}}, timeout=30)

    def status_of(execution_id: str) -> str:
        return CognitiveExecution.objects.get(id=execution_id).status

    try:
        before = execute("before the outage").json()["id"]
        wait_for(lambda: status_of(before) == "succeeded", 90, "an execution to succeed before the outage")

        server.stop()
        for i in range(3):
            started = time.monotonic()
            response = execute(f"during the outage {i}")
            assert time.monotonic() - started < 10, "a dead broker must not hang the request"
            assert response.status_code == 503
            body = response.json()
            assert body["code"] == "queue_unavailable" and "retry" in body["detail"]
        assert not CognitiveExecution.objects.filter(status="pending").exists()
        refused = CognitiveExecution.objects.filter(error__type="queue_unavailable")
        assert refused.count() == 3 and {e.status for e in refused} == {"failed"}

        server.start()
        after = wait_for(lambda: _accepted(execute("after the outage")), 30, "the API to accept again")
        wait_for(lambda: status_of(after) == "succeeded", 90, "an execution to succeed after the outage")
    finally:
        stop(worker)
        stop(web)
        server.close()


def _accepted(response: requests.Response) -> str | None:
    return response.json()["id"] if response.status_code == 202 else None
