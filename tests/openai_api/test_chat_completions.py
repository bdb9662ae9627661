"""`POST /v1/chat/completions` and `GET /v1/models` with the official `openai` client against a live
server: programs as chat models, history from earlier messages, usage, and OpenAI-shaped errors."""

import json

import openai
import pytest
from rest_framework.test import APIClient

from executions.models import CognitiveExecution
from tests.factories import (
    KeyFactory,
    MembershipFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
    ViewerFactory,
)

QA = {"signature": "question -> answer"}
CHAT = {"signature": "question, history: History -> answer"}


@pytest.fixture
def key(transactional_db):
    return KeyFactory(user=OperatorFactory(username="oai"))


@pytest.fixture
def client(live_server, http_provider, key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key.key, max_retries=0, timeout=30)


def test_a_program_answers_as_a_chat_model_with_usage(client):
    ProgramFactory(name="qa", pipeline=QA, status="active")
    completion = client.chat.completions.create(
        model="dspex/qa",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 2 + 2?"}],
    )
    assert completion.object == "chat.completion" and completion.model == "dspex/qa"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "stop"
    execution = CognitiveExecution.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert (
        execution.input == {"question": "What is 2 + 2?"}
        and execution.output["answer"] == choice.message.content
    )
    assert completion.usage.prompt_tokens == execution.metrics["prompt_tokens"] > 0
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert completion.model_extra["dspex"]["ignored_messages"] == 1


def test_earlier_messages_fill_the_history_input(client):
    ProgramFactory(name="chat", pipeline=CHAT, status="active")
    completion = client.chat.completions.create(
        model="dspex/chat",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    execution = CognitiveExecution.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert execution.input["question"] == "What is my name?"
    assert execution.input["history"] == {
        "messages": [{"question": "My name is Ada.", "answer": "Hello Ada."}]
    }
    lm = next(entry for entry in execution.trace if entry["kind"] == "lm")
    assert any("Hello Ada." in str(message.get("content")) for message in lm["messages"])


def test_a_program_with_several_inputs_takes_a_json_object(client):
    ProgramFactory(name="ctx", pipeline={"signature": "context, question -> answer"}, status="active")
    content = json.dumps({"context": "The sky is green here.", "question": "What colour is the sky?"})
    completion = client.chat.completions.create(
        model="dspex/ctx", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="dspex/ctx", messages=[{"role": "user", "content": "plain text"}]
        )
    error = refused.value.body
    assert error["code"] == "invalid" and error["param"] == "messages[0].content"
    assert "JSON object" in error["message"] and error["type"] == "invalid_request_error"


def test_models_lists_what_the_key_may_run(client, live_server):
    ProgramFactory(name="listed", pipeline=QA, status="active")
    ProgramFactory(name="draft-one", pipeline=QA, status="draft")
    ProgramFactory(name="elsewhere", pipeline=QA, status="active", project=ProjectFactory(name="other"))
    assert {m.id for m in client.models.list()} == {"dspex/listed"}
    viewer = openai.OpenAI(
        base_url=f"{live_server.url}/v1",
        api_key=KeyFactory(user=ViewerFactory(username="v")).key,
        max_retries=0,
    )
    with pytest.raises(openai.PermissionDeniedError):
        viewer.models.list()


def test_errors_come_back_in_openais_shape(client, live_server, key):
    ProgramFactory(name="qa", pipeline=QA, status="active")
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="dspex/nope", messages=[{"role": "user", "content": "hi"}])
    assert (
        unknown.value.body["param"] == "model" and "No program named 'nope'" in unknown.value.body["message"]
    )
    with pytest.raises(openai.BadRequestError) as not_ours:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert not_ours.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as last:
        client.chat.completions.create(model="dspex/qa", messages=[{"role": "assistant", "content": "hi"}])
    assert last.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as streaming:  # refused before any stream starts
        client.chat.completions.create(
            model="dspex/nope", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert streaming.value.body["param"] == "model"
    bad = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="dsx_not_a_key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        bad.models.list()
    assert (
        denied.value.body["code"] == "authentication_failed"
        and denied.value.body["type"] == "authentication_error"
    )
    raw = APIClient()
    raw.credentials(HTTP_AUTHORIZATION=f"Bearer {key.key}")
    malformed = raw.post("/v1/chat/completions", "{not json", content_type="application/json")
    assert malformed.status_code == 400 and set(malformed.json()) == {"error"}


def test_another_projects_program_does_not_exist_for_the_key(live_server, http_provider, transactional_db):
    user = OperatorFactory(username="two")
    team_b = ProjectFactory(name="team-b")
    MembershipFactory(user=user, project=team_b, role="operator")
    ProgramFactory(name="secret", pipeline=QA, status="active")  # in `default`
    key_b = KeyFactory(user=user, project=team_b)
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key_b.key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as hidden:
        client.chat.completions.create(model="dspex/secret", messages=[{"role": "user", "content": "hi"}])
    assert "No program named 'secret'" in hidden.value.body["message"]
