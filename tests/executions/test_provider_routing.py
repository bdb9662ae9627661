"""Providers, deployments and fallbacks end to end: real HTTP to several simulated providers, each
requiring its own key, through `POST /api/v1/programs/{id}/execute/` and a real worker."""

import json

import pytest

from executions.models import CognitiveExecution
from llm import budgets, gateway, resilience
from tests.support import start_worker, wait_for

pytestmark = pytest.mark.django_db

# USD per million tokens: different for each model, so a trace shows which one it was priced by.
PRICES = {
    "a/sim-default": {"prompt": 1000, "completion": 1000},
    "b/sim-default": {"prompt": 3, "completion": 5},
}


@pytest.fixture
def providers(simlm_factory, settings, monkeypatch, tmp_path):
    """Two simulated providers, `a` (key from an environment variable) and `b` (key from a file),
    each answering 401 to any key but its own; `wrong` points at a's server with b's key."""
    a, b = simlm_factory(api_key="key-of-a"), simlm_factory(api_key="key-of-b")
    monkeypatch.setenv("DSPEX_TEST_A_KEY", "key-of-a")
    key_file = tmp_path / "b.key"
    key_file.write_text("key-of-b\n")
    registry = {
        "a": {"api_base": a.base_url, "api_key_env": "DSPEX_TEST_A_KEY", "timeout_s": 5},
        "b": {"api_base": b.base_url, "api_key_file": str(key_file), "timeout_s": 5},
        "wrong": {"api_base": a.base_url, "api_key_file": str(key_file)},
    }
    settings.DSPEX_PROVIDERS = registry
    settings.DSPEX_MODEL_DEPLOYMENTS = {}
    settings.DSPEX_MODEL_FALLBACKS = {}
    settings.DSPEX_PRICES = PRICES
    settings.DSPEX_BUDGETS = {}
    budgets.invalidate()
    resilience._redis.skip_until = 0.0
    gateway.reset()
    yield a, b, registry, key_file
    gateway.reset()


def execute(api, program, question: str, **body):
    return api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": question}, "wait": True, "cache": False, **body},
        format="json",
    )


def lm_entries(body: dict) -> list[dict]:
    return [e for e in body["trace"] if e["kind"] == "lm"]


def qa(make_program, model: str, name: str = "qa"):
    return make_program(name, pipeline={"lm": {"model": model}, "signature": "question -> answer"})


def test_each_provider_receives_its_own_key_and_only_its_own(api, make_program, providers, settings):
    a, b, _, _ = providers
    for model, server in (("a/sim-default", a), ("b/sim-default", b)):
        response = execute(api, qa(make_program, model, name=model.replace("/", "-")), f"hello {model}")
        assert response.status_code == 200, response.json()
        call = lm_entries(response.json())[0]
        assert (call["provider"], call["deployment"], call["fallbacks"]) == (model[0], model, [])
        assert server.requests("ok") == 1
    assert a.requests("unauthorized") == b.requests("unauthorized") == 0
    # b's key sent to a's server is refused there: a permanent failure that never falls back.
    settings.DSPEX_MODEL_FALLBACKS = {"default": ["b/sim-default"]}
    gateway.reset()
    response = execute(api, qa(make_program, "wrong/sim-default", name="wrong"), "hello wrong")
    body = response.json()
    assert body["status"] == "failed" and body["error"]["type"] == "provider_auth", body
    assert body["attempts"] == 1
    assert a.requests("unauthorized") == 1 and b.requests() == 1  # b got nothing more
    assert "key-of" not in json.dumps(body)


def test_weighted_deployments_spread_calls_by_weight(api, make_program, providers, settings):
    a, b, _, _ = providers
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {
            "strategy": "weighted",
            "deployments": [{"model": "a/sim-default", "weight": 3}, {"model": "b/sim-default", "weight": 1}],
        }
    }
    gateway.reset()
    program = qa(make_program, "fast")
    answered = {"a/sim-default": 0, "b/sim-default": 0}
    for i in range(200):
        response = execute(api, program, f"question {i}")
        assert response.status_code == 200, response.json()
        answered[lm_entries(response.json())[0]["deployment"]] += 1
    assert (a.requests(), b.requests()) == (answered["a/sim-default"], answered["b/sim-default"])
    # 150 expected on a; the binomial's standard deviation is ~6, so +-30 is a loose bound.
    assert 120 <= a.requests() <= 180 and a.requests() + b.requests() == 200, answered


def test_a_dead_provider_falls_back_within_the_attempt_priced_by_the_answering_model(
    api, make_program, providers, settings
):
    a, b, _, _ = providers
    settings.DSPEX_MODEL_FALLBACKS = {"a/sim-default": ["b/sim-default"]}
    gateway.reset()
    a.stop()  # connection refused
    response = execute(api, qa(make_program, "a/sim-default"), "is anyone there?")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["attempts"] == 1
    call = lm_entries(body)[0]
    assert call["model"] == "a/sim-default"
    assert (call["provider"], call["deployment"]) == ("b", "b/sim-default")
    assert call["fallbacks"] == [{"model": "a/sim-default", "reason": "connection_error"}]
    assert b.requests("ok") == 1
    expected = (call["prompt_tokens"] * 3 + call["completion_tokens"] * 5) / 1_000_000
    assert call["cost_usd"] == pytest.approx(expected)


def test_a_fallback_answer_is_cached_under_the_model_that_produced_it(api, make_program, providers, settings):
    a, b, _, _ = providers
    settings.DSPEX_MODEL_FALLBACKS = {"a/sim-default": ["b/sim-default"]}
    gateway.reset()
    a.stop()
    first = execute(api, qa(make_program, "a/sim-default"), "cache me", cache=True).json()
    assert lm_entries(first)[0]["deployment"] == "b/sim-default"
    # The same request to the model that answered is served from the cache...
    hit = lm_entries(
        execute(api, qa(make_program, "b/sim-default", name="b"), "cache me", cache=True).json()
    )[0]
    assert hit["cache_hit"] is True and hit["deployment"] == "b/sim-default"
    assert b.requests() == 1


def test_a_deployment_with_an_open_breaker_is_skipped(api, make_program, providers, settings):
    a, b, registry, _ = providers
    settings.DSPEX_PROVIDERS = {**registry, "a": {**registry["a"], "limits": {"failure_threshold": 1}}}
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {"deployments": [{"model": "a/sim-default", "weight": 1e6}, {"model": "b/sim-default"}]}
    }
    gateway.reset()
    a.configure(error_rate=1.0)
    program = qa(make_program, "fast")
    # The first call fails at a (its breaker opens) and is handed to the model's other deployment.
    first = execute(api, program, "first")
    assert first.status_code == 200, first.json()
    [entry] = lm_entries(first.json())
    assert entry["deployment"] == "b/sim-default"
    assert entry["fallbacks"] == [{"model": "a/sim-default", "reason": "server_error"}]
    assert (a.requests(), b.requests()) == (1, 1)
    for i in range(10):
        response = execute(api, program, f"later {i}")
        assert response.status_code == 200, response.json()
        [entry] = lm_entries(response.json())
        assert entry["deployment"] == "b/sim-default" and entry["fallbacks"] == []  # a is skipped, unasked
    assert (a.requests(), b.requests()) == (1, 11)


@pytest.mark.django_db(transaction=True)
def test_a_queued_run_on_a_worker_falls_back_from_a_dead_provider(api, make_program, providers):
    a, b, registry, _ = providers
    env = {
        "DSPEX_PROVIDERS": json.dumps(registry),
        "DSPEX_MODEL_FALLBACKS": json.dumps({"a/sim-default": ["b/sim-default"]}),
        "DSPEX_PRICES": json.dumps(PRICES),
        "DSPEX_TEST_A_KEY": "key-of-a",
    }
    worker = start_worker(queues="llm_calls,priority", env=env)
    try:
        a.stop()
        program = qa(make_program, "a/sim-default")
        response = api.post(
            f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "queued"}}, format="json"
        )
        assert response.status_code == 202, response.json()
        execution_id = response.json()["id"]
        row = wait_for(
            lambda: CognitiveExecution.objects.filter(id=execution_id, status="succeeded").first(),
            60,
            "the queued execution to succeed",
        )
    finally:
        worker.stop()
    call = next(e for e in row.trace if e["kind"] == "lm")
    assert call["fallbacks"] == [{"model": "a/sim-default", "reason": "connection_error"}]
    assert (call["provider"], call["deployment"], row.attempts) == ("b", "b/sim-default", 1)
    assert b.requests("ok") == 1
