"""Two turns of one session at once never interleave: one runs, the other is refused with 409
`session_busy`, with real threads and connections against the simulated provider over HTTP."""

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from executions.models import CognitiveExecution
from tests.factories import KeyFactory
from tests.sessions.conftest import turn
from tests.support import wait_for

pytestmark = pytest.mark.usefixtures("transactional_db")


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `work` in a thread of its own (its own database connection); its result lands in the list."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def client_of(user: Any) -> APIClient:
    """A client of its own (one per thread) with an API key of the user's."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {KeyFactory(user=user).key}")
    return client


def test_a_turn_while_another_runs_is_refused_with_session_busy(api, operator, open_session, http_provider):
    session = open_session()
    http_provider.configure(latency_ms=1500)
    thread, result = in_thread(lambda: turn(client_of(operator), session, "slow first?"))
    running = wait_for(
        lambda: CognitiveExecution.objects.filter(session_id=session["id"], status="running").first(),
        10,
        "the first turn to be running",
        interval=0.05,
    )
    busy = turn(api, session, "meanwhile?")
    assert busy.status_code == 409, busy.content
    assert busy.json()["code"] == "session_busy" and str(running.id) in busy.json()["detail"]
    assert api.get(f"/api/v1/sessions/{session['id']}/").json()["busy"] is True
    thread.join(30)
    assert result and result[0].status_code == 200 and result[0].json()["turn"] == 1
    http_provider.configure(latency_ms=0)
    after = turn(api, session, "after?").json()
    assert after["turn"] == 2 and [m["question"] for m in after["input"]["history"]["messages"]] == [
        "slow first?"
    ]
    assert CognitiveExecution.objects.filter(session_id=session["id"]).count() == 2


@pytest.mark.parametrize("wait", [True, False])
def test_simultaneous_turns_start_exactly_one(operator, open_session, http_provider, wait):
    """Eight requests released at once (waited or queued turns): the row lock lets one through."""
    session = open_session()
    http_provider.configure(latency_ms=300)
    clients = [client_of(operator) for _ in range(8)]
    barrier = threading.Barrier(len(clients))

    def attempt(client: APIClient, n: int) -> int:
        barrier.wait()
        return turn(client, session, f"at once {n}?", wait=wait).status_code

    threads = [in_thread(lambda c=c, n=n: attempt(c, n)) for n, c in enumerate(clients)]
    for thread, _ in threads:
        thread.join(30)
    codes = sorted(result[0] for _, result in threads)
    assert codes == [200 if wait else 202] + [409] * 7, codes
    assert CognitiveExecution.objects.filter(session_id=session["id"]).count() == 1
    http_provider.configure(latency_ms=0)
