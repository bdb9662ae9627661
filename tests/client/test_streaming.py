"""The Python client's `.stream()` of a program and of a session turn, against a live server:
parsed events as they arrive, `done` as a typed execution, refusals as the client's errors."""

import pytest
from dspex_client import BadRequest, Client, StreamEvent

from tests.factories import KeyFactory, OperatorFactory

QA = {"signature": "question -> answer"}


@pytest.fixture
def client(live_server, http_provider, transactional_db):
    key = KeyFactory(user=OperatorFactory(username="streams"))
    with Client(live_server.url, token=key.key, timeout_s=30) as c:
        yield c


def test_a_program_streams_tokens_then_its_execution(client, http_provider):
    http_provider.configure(token_delay_ms=5)
    qa = client.programs.create(name="client-stream", pipeline=QA, status="active")
    events = list(qa.stream({"question": "What is the capital of France?"}))
    assert all(isinstance(e, StreamEvent) for e in events)
    assert events[0].event == "step" and events[0].data == {"step": "main", "status": "started"}
    tokens = [e.data["chunk"] for e in events if e.event == "token"]
    done = events[-1].execution
    assert len(tokens) >= 2 and done is not None and done.status == "succeeded"
    assert "".join(tokens).strip() == done.output["answer"]
    with pytest.raises(BadRequest) as refused:
        list(qa.stream({"question": "q", "colour": "red"}))
    assert "input.colour" in str(refused.value.errors)


def test_a_session_turn_streams(client, http_provider):
    chat = client.programs.create(
        name="client-stream-chat",
        pipeline={"signature": "question, history: History -> answer"},
        status="active",
    )
    session = chat.session()
    first = list(session.stream({"question": "My name is Ada."}))
    second = list(session.stream({"question": "What is my name?"}))
    assert first[-1].execution.turn == 1 and second[-1].execution.turn == 2
    assert second[-1].execution.session == session.id
