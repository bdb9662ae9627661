"""A session turn with `"stream": true` (tokens, `done` = the stored turn, the next turn sees it
in its history), and `GET /executions/{id}/events/` following an execution a real Celery
worker runs in another process."""

import time

import pytest
import requests

from executions.models import CognitiveExecution
from tests.factories import ProgramFactory
from tests.streaming.conftest import events

CHAT = {"signature": "question, history: History -> answer"}


def test_a_streamed_turn_streams_tokens_and_is_the_sessions_turn(post, http_provider):
    http_provider.configure(token_delay_ms=10)
    program = ProgramFactory(name="chat", pipeline=CHAT)
    session = post("/api/v1/sessions/", {"program": str(program.id)})
    assert session.status_code == 201, session.text
    session_id = session.json()["id"]
    first = list(
        events(
            post(
                f"/api/v1/sessions/{session_id}/turns/",
                {"input": {"question": "Hi, I am Ada."}, "stream": True},
            )
        )
    )
    tokens = [data for event, data in first if event == "token"]
    assert len(tokens) >= 2 and first[-1][0] == "done"
    done = first[-1][1]
    assert (done["session"], done["turn"]) == (session_id, 1)
    assert "".join(t["chunk"] for t in tokens).strip() == done["output"]["answer"]
    second = list(
        events(
            post(
                f"/api/v1/sessions/{session_id}/turns/", {"input": {"question": "Who am I?"}, "stream": True}
            )
        )
    )
    assert second[-1][0] == "done" and second[-1][1]["turn"] == 2
    history = CognitiveExecution.objects.get(id=second[-1][1]["id"]).input["history"]["messages"]
    assert history == [{"question": "Hi, I am Ada.", **done["output"]}]


def test_a_busy_session_refuses_a_streamed_turn_before_the_stream(post, http_provider):
    http_provider.configure(token_delay_ms=100)
    program = ProgramFactory(name="chat", pipeline=CHAT)
    session_id = post("/api/v1/sessions/", {"program": str(program.id)}).json()["id"]
    path = f"/api/v1/sessions/{session_id}/turns/"
    running = post(path, {"input": {"question": "a long one"}, "stream": True})
    next(events(running))  # the first turn has started
    refused = post(path, {"input": {"question": "meanwhile?"}, "stream": True})
    assert refused.status_code == 409, list(events(refused))
    assert refused.headers["Content-Type"].startswith("application/json")
    assert refused.json()["code"] == "session_busy"
    assert list(events(running))[-1][0] == "done"


@pytest.mark.e2e
def test_events_follow_an_execution_a_worker_runs(live_server, key, worker):
    program = ProgramFactory(name="qa")
    headers = {"Authorization": f"Bearer {key.key}"}
    queued = requests.post(
        f"{live_server.url}/api/v1/programs/{program.id}/execute/",
        json={"input": {"question": "queued?"}},
        headers=headers,
        timeout=10,
    )
    assert queued.status_code == 202, queued.text
    execution_id = queued.json()["id"]
    started = time.monotonic()
    response = requests.get(
        f"{live_server.url}/api/v1/executions/{execution_id}/events/",
        headers=headers,
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    seen = list(events(response))
    assert time.monotonic() - started < 40
    statuses = [data["status"] for event, data in seen if event == "status"]
    assert statuses[-1] == "succeeded" and seen[-1][0] == "done"
    execution = CognitiveExecution.objects.get(id=execution_id)
    assert seen[-1][1]["output"] == execution.output and execution.worker.endswith(f":{worker.proc.pid}")
    # A finished one answers at once; a stranger gets the usual 404/401.
    again = list(
        events(
            requests.get(
                f"{live_server.url}/api/v1/executions/{execution_id}/events/",
                headers=headers,
                stream=True,
                timeout=10,
            )
        )
    )
    assert [event for event, _ in again] == ["status", "done"]
    assert requests.get(
        f"{live_server.url}/api/v1/executions/{execution_id}/events/", timeout=10
    ).status_code in (401, 403)
