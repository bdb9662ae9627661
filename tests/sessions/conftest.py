"""Fixtures of the session tests: a chat program (a History input) and sessions of it."""

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.factories import CHAT_PIPELINE, ProgramFactory


@pytest.fixture
def chat_program(db: None) -> Any:
    """`question, history: History -> answer`, on the in-process simulated LM."""
    return ProgramFactory(name="chat", pipeline=dict(CHAT_PIPELINE))


@pytest.fixture
def open_session(api: APIClient, chat_program: Any) -> Callable[..., dict]:
    """`open_session(program=None, **body)`: POST /sessions/ as the operator; the 201 body."""

    def make(program: Any = None, **body: Any) -> dict:
        program = program or chat_program
        response = api.post("/api/v1/sessions/", {"program": str(program.id), **body}, format="json")
        assert response.status_code == 201, response.content
        return response.json()

    return make


def turn(api: APIClient, session: dict | str, question: str, **body: Any) -> Any:
    """POST one turn of `session` asking `question`."""
    session_id = session["id"] if isinstance(session, dict) else session
    return api.post(
        f"/api/v1/sessions/{session_id}/turns/", {"input": {"question": question}, **body}, format="json"
    )
