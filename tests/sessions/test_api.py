"""The sessions API: create, turns (history reaching the LM), read with history, delete, expiry,
bad input as clear 400s, project scoping."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from executions.models import CognitiveExecution, Session
from tests.factories import (
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
    SessionFactory,
    TokenFactory,
    ViewerFactory,
)
from tests.sessions.conftest import turn

pytestmark = pytest.mark.django_db


def lm_messages(execution: dict) -> list[dict]:
    """The messages the LM received in the execution's (only) LM call, from its trace."""
    calls = [entry for entry in execution["trace"] if entry["kind"] == "lm"]
    assert len(calls) == 1, calls
    return calls[0]["messages"]


def test_a_session_is_created_with_its_ttl_and_metadata(api, chat_program, open_session):
    before = timezone.now()
    body = open_session(metadata={"user": "u-1", "channel": "web"}, ttl_s=600)
    assert set(body) >= {"id", "program", "turns", "metadata", "created_at", "expires_at"}
    assert body["program"] == str(chat_program.id) and body["turns"] == 0 and body["busy"] is False
    assert body["metadata"] == {"user": "u-1", "channel": "web"} and body["ttl_s"] == 600
    session = Session.objects.get(id=body["id"])
    assert timedelta(seconds=599) < session.expires_at - before < timedelta(seconds=601)


def test_a_session_without_ttl_gets_the_default(open_session, settings):
    assert open_session()["ttl_s"] == settings.DSPEX_SESSION_TTL_S == 86_400


def test_each_turn_sends_the_earlier_turns_to_the_lm_as_conversation_history(api, open_session):
    session = open_session()
    first = turn(api, session, "What is the capital of France?")
    assert first.status_code == 200, first.content
    one = first.json()
    assert (one["session"], one["turn"], one["status"]) == (session["id"], 1, "succeeded")
    assert one["input"] == {"question": "What is the capital of France?", "history": {"messages": []}}
    assert [m["role"] for m in lm_messages(one)] == ["system", "user"]

    second = turn(api, session, "And of Germany?")
    assert second.status_code == 200, second.content
    two = second.json()
    assert two["turn"] == 2
    earlier = {"question": "What is the capital of France?", **one["output"]}
    assert two["input"]["history"] == {"messages": [earlier]}
    # DSPy's ChatAdapter: each earlier turn is a user message (its inputs) and an assistant
    # message (its outputs, in the output field template), before the current question.
    messages = lm_messages(two)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "What is the capital of France?" in messages[1]["content"]
    assert one["output"]["answer"] in messages[2]["content"]
    assert "[[ ## answer ## ]]" in messages[2]["content"]
    assert "And of Germany?" in messages[3]["content"]
    # Each turn is its own execution, with its own trace and cost.
    rows = CognitiveExecution.objects.filter(session_id=session["id"]).order_by("turn")
    assert [(r.turn, r.metrics["lm_calls"]) for r in rows] == [(1, 1), (2, 1)]
    assert rows[1].metrics["prompt_tokens"] > rows[0].metrics["prompt_tokens"]


def test_reading_a_session_shows_its_history_as_the_client_sent_it(api, open_session):
    session = open_session()
    outputs = [turn(api, session, q).json() for q in ("first?", "second?")]
    body = api.get(f"/api/v1/sessions/{session['id']}/").json()
    assert body["turns"] == 2 and body["busy"] is False
    assert body["history"] == [
        {"turn": n + 1, "input": {"question": q}, "output": out["output"], "execution": out["id"]}
        for n, (q, out) in enumerate(zip(("first?", "second?"), outputs, strict=True))
    ]


def test_history_holds_at_most_the_configured_number_of_turns(api, open_session, settings):
    settings.DSPEX_SESSION_HISTORY_TURNS = 2
    session = open_session()
    for question in ("one?", "two?", "three?"):
        assert turn(api, session, question).status_code == 200
    fourth = turn(api, session, "four?").json()
    assert fourth["turn"] == 4
    assert [m["question"] for m in fourth["input"]["history"]["messages"]] == ["two?", "three?"]


def test_a_failed_turn_is_kept_but_does_not_advance_the_conversation(api, open_session, http_provider):
    session = open_session()
    assert turn(api, session, "fine?").status_code == 200
    # A variable override that does not exist fails validation before anything is stored...
    refused = turn(api, session, "bad?", variables={"nope": 1})
    assert refused.status_code == 400 and refused.json()["errors"][0]["path"] == "variables.nope"
    assert CognitiveExecution.objects.filter(session_id=session["id"]).count() == 1
    # ...a failure while running is stored with its number, and the next turn takes it again.
    http_provider.configure(error_rate=1.0)
    failed = turn(api, session, "fails?")
    assert failed.status_code == 502 and failed.json()["status"] == "failed", failed.content
    assert failed.json()["turn"] == 2
    http_provider.configure(error_rate=0)
    retried = turn(api, session, "again?").json()
    assert retried["turn"] == 2 and retried["status"] == "succeeded"
    assert [m["question"] for m in retried["input"]["history"]["messages"]] == ["fine?"]
    history = api.get(f"/api/v1/sessions/{session['id']}/").json()["history"]
    assert [(t["turn"], t["input"]["question"]) for t in history] == [(1, "fine?"), (2, "again?")]
    statuses = CognitiveExecution.objects.filter(session_id=session["id"]).order_by("created_at")
    assert [(e.turn, e.status) for e in statuses] == [(1, "succeeded"), (2, "failed"), (2, "succeeded")]


def test_a_program_without_a_history_input_records_its_turns_without_injecting(api, open_session):
    plain = ProgramFactory(name="plain")  # question -> answer
    session = open_session(program=plain)
    first, second = turn(api, session, "a?").json(), turn(api, session, "b?").json()
    assert (first["turn"], second["turn"]) == (1, 2)
    assert second["input"] == {"question": "b?"}
    assert [m["role"] for m in lm_messages(second)] == ["system", "user"]
    assert [t["input"] for t in api.get(f"/api/v1/sessions/{session['id']}/").json()["history"]] == [
        {"question": "a?"},
        {"question": "b?"},
    ]


def test_an_input_that_sets_the_history_itself_is_refused_naming_the_field(api, open_session):
    session = open_session()
    response = api.post(
        f"/api/v1/sessions/{session['id']}/turns/",
        {"input": {"question": "q", "history": {"messages": []}}},
        format="json",
    )
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["code"] == "invalid_input" and body["errors"][0]["path"] == "input.history"
    assert "session" in body["errors"][0]["message"]
    assert not CognitiveExecution.objects.exists()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"input": {}}, "input.question"),
        ({"input": "text"}, "input"),
        ({"input": {"question": "q"}, "stream": "maybe"}, "stream"),
        ({"input": {"question": "q"}, "surprise": 1}, "surprise"),
        ({"input": {"question": "q"}, "wait": "maybe"}, "wait"),
        ({}, "input"),
    ],
)
def test_a_bad_turn_is_a_400_naming_the_field_and_stores_nothing(api, open_session, body, path):
    session = open_session()
    response = api.post(f"/api/v1/sessions/{session['id']}/turns/", body, format="json")
    assert response.status_code == 400, response.content
    assert path in [e["path"] for e in response.json()["errors"]], response.json()
    assert not CognitiveExecution.objects.exists()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": "soon"}, "ttl_s"),
        ({"ttl_s": 10**9}, "ttl_s"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
        ({"program": "not-a-uuid"}, "program"),
        ({"program": "8d7e3c1e-0000-4000-8000-000000000000"}, "program"),
        ({"extra": True}, "extra"),
    ],
)
def test_a_bad_session_is_a_400_naming_the_field(api, chat_program, body, path):
    response = api.post("/api/v1/sessions/", {"program": str(chat_program.id), **body}, format="json")
    assert response.status_code == 400, response.content
    assert path in [e["path"] for e in response.json()["errors"]], response.json()
    assert not Session.objects.exists()


def test_an_archived_program_s_turn_is_refused(api, open_session, chat_program):
    session = open_session()
    chat_program.status = "archived"
    chat_program.save()
    response = turn(api, session, "still there?")
    assert response.status_code == 409 and response.json()["code"] == "program_archived"
    assert not CognitiveExecution.objects.exists()


def test_an_expired_session_answers_404_session_expired(api, open_session):
    session = open_session()
    Session.objects.filter(id=session["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    for response in (
        api.get(f"/api/v1/sessions/{session['id']}/"),
        turn(api, session, "late?"),
        api.delete(f"/api/v1/sessions/{session['id']}/"),
    ):
        assert response.status_code == 404, response.content
        assert response.json()["code"] == "session_expired"
    assert session["id"] not in {s["id"] for s in api.get("/api/v1/sessions/").json()["results"]}
    assert not CognitiveExecution.objects.exists()


def test_each_turn_pushes_the_expiry_back_by_the_ttl(api, open_session):
    session = open_session(ttl_s=120)
    Session.objects.filter(id=session["id"]).update(expires_at=timezone.now() + timedelta(seconds=5))
    assert turn(api, session, "keep me?").status_code == 200
    left = Session.objects.get(id=session["id"]).expires_at - timezone.now()
    assert timedelta(seconds=110) < left <= timedelta(seconds=120)


def test_deleting_a_session_keeps_its_turns_as_executions(api, open_session):
    session = open_session()
    execution_id = turn(api, session, "q?").json()["id"]
    assert api.delete(f"/api/v1/sessions/{session['id']}/").status_code == 204
    assert not Session.objects.filter(id=session["id"]).exists()
    assert api.get(f"/api/v1/sessions/{session['id']}/").json()["code"] == "not_found"
    kept = CognitiveExecution.objects.get(id=execution_id)
    assert kept.session_id is None and kept.turn == 1


def test_another_project_s_session_is_a_404_and_lists_without_it(chat_program):
    theirs = SessionFactory()
    elsewhere = ProjectFactory(name="elsewhere")
    user = OperatorFactory(username="olga-b", project=elsewhere)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory(user=user).key}")
    for response in (
        client.get(f"/api/v1/sessions/{theirs.id}/"),
        client.post(f"/api/v1/sessions/{theirs.id}/turns/", {"input": {"question": "q"}}, format="json"),
        client.delete(f"/api/v1/sessions/{theirs.id}/"),
    ):
        assert response.status_code == 404 and response.json()["code"] == "not_found", response.content
    assert client.get("/api/v1/sessions/").json()["results"] == []
    # Their program cannot be named for a new session either: as a missing one.
    created = client.post("/api/v1/sessions/", {"program": str(chat_program.id)}, format="json")
    assert created.status_code == 400 and created.json()["errors"][0]["path"] == "program"
    assert Session.objects.count() == 1 and not CognitiveExecution.objects.exists()


def test_a_viewer_reads_sessions_but_cannot_open_or_run_one(chat_program):
    session = SessionFactory(program=chat_program)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory(user=ViewerFactory()).key}")
    assert client.get(f"/api/v1/sessions/{session.id}/").status_code == 200
    refused: list[Any] = [
        client.post("/api/v1/sessions/", {"program": str(chat_program.id)}, format="json"),
        client.post(f"/api/v1/sessions/{session.id}/turns/", {"input": {"question": "q"}}, format="json"),
        client.delete(f"/api/v1/sessions/{session.id}/"),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert Session.objects.count() == 1 and not CognitiveExecution.objects.exists()


def test_sessions_and_their_turns_can_be_listed_by_program_and_session(api, open_session):
    other = ProgramFactory(name="other-chat", pipeline={"signature": "question, history: History -> answer"})
    mine, theirs = open_session(), open_session(program=other)
    turn(api, mine, "one?")
    turn(api, theirs, "two?")
    listed = api.get("/api/v1/sessions/", {"program": str(other.id)}).json()["results"]
    assert [s["id"] for s in listed] == [theirs["id"]] and listed[0]["turns"] == 1
    executions = api.get("/api/v1/executions/", {"session": mine["id"]}).json()["results"]
    assert [(e["session"], e["turn"], e["input"]["question"]) for e in executions] == [
        (mine["id"], 1, "one?")
    ]
    assert api.get("/api/v1/sessions/", {"program": "nope"}).status_code == 400


def test_the_caches_key_on_the_history_too(api, open_session):
    """The history is part of the stored input and of the prompt: a conversation that repeats
    another is answered from the caches (the answer cache once a run was fully LLM-cached, as
    for `execute`), with its turns still stored and counted; the same question after another
    history is not."""
    sessions = [open_session() for _ in range(3)]
    turns = [turn(api, session, "same?").json() for session in sessions]
    assert [t["metrics"]["cache_hits"] for t in turns[:2]] == [0, 1]
    answered = turns[2]
    assert answered["metrics"].get("answer_cache_hit") is True
    assert (answered["session"], answered["turn"], answered["status"]) == (sessions[2]["id"], 1, "succeeded")
    assert api.get(f"/api/v1/sessions/{sessions[2]['id']}/").json()["turns"] == 1
    follow_up = turn(api, sessions[0], "follow-up?").json()
    fresh = turn(api, open_session(), "follow-up?").json()  # same question, no history
    assert follow_up["metrics"]["cache_hits"] == fresh["metrics"]["cache_hits"] == 0
    assert turn(api, sessions[1], "follow-up?").json()["metrics"]["cache_hits"] == 1
