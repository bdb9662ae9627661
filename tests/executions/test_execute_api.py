"""POST /api/v1/programs/{id}/execute/ — synchronous runs, traces, cost, failures, bad input."""

import json

import pytest
import redis
from django.conf import settings

from executions.models import CognitiveExecution

pytestmark = pytest.mark.django_db

LM_ENTRY_KEYS = {
    "kind",
    "step",
    "model",
    "messages",
    "outputs",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_ms",
    "cache_hit",
    "error",
}
MODULE_ENTRY_KEYS = {"kind", "step", "module", "inputs", "outputs", "duration_ms"}
EXECUTION_KEYS = {
    "id",
    "program",
    "program_version",
    "optimization_result",
    "status",
    "input",
    "output",
    "error",
    "trace",
    "metrics",
    "duration_ms",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
}


def execute(api, program, body):
    return api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")


def test_it_runs_a_program_and_returns_the_full_trace(api, make_program):
    program = make_program(pipeline={"signature": "question -> answer"})
    response = execute(api, program, {"input": {"question": "What is 2 + 3?"}, "wait": True})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert set(body) >= EXECUTION_KEYS
    assert body["status"] == "succeeded"
    assert body["output"]["answer"].strip() != ""
    assert body["program_version"] == 1 and body["attempts"] == 1
    modules = [e for e in body["trace"] if e["kind"] == "module"]
    calls = [e for e in body["trace"] if e["kind"] == "lm"]
    assert [m["step"] for m in modules] == ["main"]
    assert set(modules[0]) >= MODULE_ENTRY_KEYS
    assert modules[0]["inputs"] == {"question": "What is 2 + 3?"}
    assert len(calls) == 1 and set(calls[0]) >= LM_ENTRY_KEYS
    call = calls[0]
    assert call["step"] == "main" and call["model"] == "sim/default"
    assert call["messages"][0]["role"] == "system" and "question" in call["messages"][-1]["content"]
    assert call["prompt_tokens"] > 0 and call["completion_tokens"] > 0
    assert call["cost_usd"] == 0  # the simulated provider's default price
    assert call["cache_hit"] is False and call["error"] is None
    sums = {
        "lm_calls": 1,
        "embedding_calls": 0,  # no Retrieve step
        "cache_hits": 0,
        "prompt_tokens": call["prompt_tokens"],
        "completion_tokens": call["completion_tokens"],
        "cost_usd": 0,
        "saved_cost_usd": 0,
    }
    assert body["metrics"] == {**sums, "cost_complete": True, "by_model": {"sim/default": sums}}
    row = CognitiveExecution.objects.get(id=body["id"])
    assert row.status == "succeeded" and row.trace == body["trace"] and row.duration_ms is not None


def test_it_goes_through_dspy_http_path_and_prices_known_models(api, make_program, http_provider):
    program = make_program(
        pipeline={"lm": {"model": "openai/gpt-4o-mini"}, "signature": "question -> answer"}
    )
    body = execute(api, program, {"input": {"question": "Capital of France?"}, "wait": True}).json()
    assert body["status"] == "succeeded", body
    call = next(e for e in body["trace"] if e["kind"] == "lm")
    # DSPy's bundled price table: gpt-4o-mini is $0.15 / 1M prompt and $0.60 / 1M completion tokens.
    expected = (call["prompt_tokens"] * 0.15 + call["completion_tokens"] * 0.60) / 1e6
    assert call["cost_usd"] == pytest.approx(expected)
    assert call["cost_usd"] > 0
    assert http_provider.stats()["requests"] >= 1


def test_it_prices_unknown_models_from_settings(api, make_program, http_provider, settings):
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1.0, "completion": 2.0},
    }
    program = make_program(pipeline={"signature": "question -> answer"})
    body = execute(api, program, {"input": {"question": "hi"}, "wait": True}).json()
    call = next(e for e in body["trace"] if e["kind"] == "lm")
    assert call["cost_usd"] == pytest.approx((call["prompt_tokens"] + 2 * call["completion_tokens"]) / 1e6)


def test_a_cache_hit_costs_nothing_and_says_so(api, make_program, http_provider, settings):
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1.0, "completion": 2.0},
    }
    program = make_program()
    first = execute(api, program, {"input": {"question": "same"}, "wait": True}).json()
    second = execute(api, program, {"input": {"question": "same"}, "wait": True}).json()
    assert first["output"] == second["output"]
    hit = next(e for e in second["trace"] if e["kind"] == "lm")
    assert hit["cache_hit"] is True
    assert hit["cost_usd"] == 0 and hit["prompt_tokens"] == 0
    assert hit["saved_usage"]["prompt_tokens"] > 0
    saved = (hit["saved_usage"]["prompt_tokens"] + 2 * hit["saved_usage"]["completion_tokens"]) / 1e6
    assert hit["saved_cost_usd"] == pytest.approx(saved)
    assert second["metrics"]["saved_cost_usd"] == pytest.approx(saved)
    assert second["metrics"]["cache_hits"] == 1
    requests_before = http_provider.stats()["requests"]
    third = execute(api, program, {"input": {"question": "same"}, "wait": True, "cache": False}).json()
    assert next(e for e in third["trace"] if e["kind"] == "lm")["cache_hit"] is False
    assert http_provider.stats()["requests"] == requests_before + 1


def test_a_dead_provider_fails_the_execution_cleanly(api, make_program, http_provider, settings):
    from bench.common import free_port
    from llm import gateway

    settings.DSPEX_LM_API_BASE = f"http://127.0.0.1:{free_port()}/v1"
    gateway.reset()
    program = make_program()
    response = execute(api, program, {"input": {"question": "anyone there?"}, "wait": True})
    assert response.status_code == 502
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"]["type"] == "provider_unavailable" and body["error"]["message"]
    assert CognitiveExecution.objects.get(id=body["id"]).status == "failed"


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ({"error_rate": 1.0}, "provider_error"),
        ({"rate_limit_rate": 1.0}, "rate_limited"),
        ({"timeout_rate": 1.0, "timeout_ms": 3000}, "provider_unavailable"),
    ],
)
def test_provider_faults_become_failed_executions(
    api, make_program, http_provider, settings, fault, error_type
):
    from llm import gateway

    settings.DSPEX_LM_TIMEOUT_S = 1.0
    gateway.reset()
    http_provider.configure(**fault)
    response = execute(api, make_program(), {"input": {"question": "q"}, "wait": True, "cache": False})
    body = response.json()
    assert body["status"] == "failed" and body["error"]["type"] == error_type
    if error_type == "rate_limited":
        # Throttled, not broken: 503 with the provider's Retry-After passed on.
        assert response.status_code == 503
        assert body["error"]["retry_after"] > 0
        assert float(response["Retry-After"]) == body["error"]["retry_after"]
    else:
        assert response.status_code == 502
    lm = [e for e in body["trace"] if e["kind"] == "lm"]
    assert lm and lm[0]["error"] is not None


def test_it_queues_without_wait(api, make_program, django_capture_on_commit_callbacks):
    program = make_program()
    with django_capture_on_commit_callbacks(execute=True):
        response = execute(api, program, {"input": {"question": "later"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert CognitiveExecution.objects.get(id=body["id"]).status == "pending"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queued = [json.loads(m) for m in broker.lrange("llm_calls", 0, -1)]
    assert any(m["headers"]["argsrepr"] == repr([body["id"]]) for m in queued)


def test_high_priority_goes_to_the_priority_queue(api, make_program, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = execute(api, make_program(), {"input": {"question": "now"}, "priority": "high"})
    assert response.status_code == 202
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert broker.llen("priority") == 1


def test_variable_overrides_are_used_and_recorded(api, make_program):
    variables = {"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2}}
    pipeline = {"lm": {"temperature": "$var.temperature"}, "signature": "question -> answer"}
    program = make_program(pipeline=pipeline, variables=variables)
    body = execute(
        api, program, {"input": {"question": "q"}, "variables": {"temperature": 0.7}, "wait": True}
    ).json()
    assert body["status"] == "succeeded"
    assert CognitiveExecution.objects.get(id=body["id"]).variables == {"temperature": 0.7}


def test_each_change_of_the_program_is_a_new_version_that_executions_record(api, make_program):
    program = make_program()
    program.pipeline = {"signature": "question -> answer, source"}
    program.save()
    body = execute(api, program, {"input": {"question": "q"}, "wait": True}).json()
    assert body["program_version"] == 2 and "source" in body["output"]


# --- bad input: a clear error with a path, and no row written -----------------------------------
@pytest.mark.parametrize(
    ("payload", "status", "path"),
    [
        ({"input": {}, "wait": True}, 400, "input.question"),
        ({"input": {"question": "q", "extra": 1}, "wait": True}, 400, "input.extra"),
        ({"input": {"question": 42}, "wait": True}, 400, "input.question"),
        ({"input": "not an object", "wait": True}, 400, "input"),
        ({"wait": True}, 400, "input"),
        ({"input": {"question": "q"}, "wait": "maybe"}, 400, "wait"),
        ({"input": {"question": "q"}, "priority": "urgent"}, 400, "priority"),
        ({"input": {"question": "q"}, "surprise": True}, 400, "surprise"),
        ({"input": {"question": "q"}, "variables": {"nope": 1}}, 400, "variables.nope"),
    ],
)
def test_bad_input_is_rejected_with_its_path(api, make_program, payload, status, path):
    program = make_program()
    response = execute(api, program, payload)
    assert response.status_code == status, response.json()
    body = response.json()
    assert body["code"] and body["detail"]
    assert path in {e["path"] for e in body["errors"]}, body
    assert not CognitiveExecution.objects.exists()


def test_variable_out_of_range_is_rejected(api, make_program):
    variables = {"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2}}
    pipeline = {"lm": {"temperature": "$var.temperature"}, "signature": "question -> answer"}
    program = make_program(pipeline=pipeline, variables=variables)
    response = execute(api, program, {"input": {"question": "q"}, "variables": {"temperature": 3.5}})
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "variables.temperature"
    assert not CognitiveExecution.objects.exists()


def test_typed_inputs_are_checked(api, make_program):
    pipeline = {"signature": "context: list[str], question: str -> answer"}
    program = make_program(pipeline=pipeline)
    response = execute(api, program, {"input": {"context": "not a list", "question": "q"}})
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "input.context"


def test_an_oversized_body_is_413(api, make_program, settings):
    settings.DSPEX_MAX_INPUT_BYTES = 1024
    response = execute(api, make_program(), {"input": {"question": "x" * 2000}, "wait": True})
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not CognitiveExecution.objects.exists()


def test_unknown_program_is_404(api):
    response = api.post(
        "/api/v1/programs/7d2b64b4-0000-4000-8000-000000000000/execute/", {"input": {}}, format="json"
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_an_archived_program_is_409(api, make_program):
    response = execute(api, make_program(status="archived"), {"input": {"question": "q"}, "wait": True})
    assert response.status_code == 409
    assert response.json()["code"] == "program_archived"
    assert not CognitiveExecution.objects.exists()


def test_malformed_json_is_400(api, make_program):
    program = make_program()
    response = api.generic(
        "POST", f"/api/v1/programs/{program.id}/execute/", "{input: nope", content_type="application/json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "malformed_request"
