"""Breakers and budgets seen end to end: executions over HTTP to the simulated provider, the
providers API, the admin page with its audited reset, Prometheus, and budget refusals."""

import re

import pytest

from llm import budgets, resilience
from monitoring.models import AuditEvent
from tests.factories import OperatorFactory, ViewerFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh(settings: object) -> None:
    resilience._redis.skip_until = 0.0
    settings.DSPEX_PROVIDER_LIMITS = {"openai": {"failure_threshold": 2, "reset_timeout_s": 60}}
    settings.DSPEX_BUDGETS = {}
    budgets.invalidate()


def execute(api, program, question: str):
    return api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": question}, "wait": True},
        format="json",
    )


def breaker_name(http_provider) -> str:
    return resilience.endpoint_name("openai", http_provider.base_url)


def open_breaker(api, program, http_provider) -> None:
    http_provider.configure(error_rate=1.0)
    for i in range(2):
        response = execute(api, program, f"failing {i}")
        assert response.json()["error"]["type"] == "provider_error"
    http_provider.configure(error_rate=0)


def test_429s_do_not_trip_the_breaker_but_5xx_do_and_then_calls_fail_fast(api, make_program, http_provider):
    program = make_program()
    http_provider.configure(rate_limit_rate=1.0, retry_after_s=1)
    for i in range(3):
        assert execute(api, program, f"limited {i}").json()["error"]["type"] == "rate_limited"
    assert resilience.status(breaker_name(http_provider))["state"] == "closed"
    http_provider.configure(rate_limit_rate=0)
    open_breaker(api, program, http_provider)
    requests_before = http_provider.stats()["requests"]

    response = execute(api, program, "while open")

    error = response.json()["error"]
    assert error["type"] == "circuit_open"
    assert 50 < error["retry_after"] <= 60
    assert http_provider.stats()["requests"] == requests_before  # never reached the provider


def test_providers_api_shows_state_failures_and_last_error(api, anonymous, make_program, http_provider):
    open_breaker(api, make_program(), http_provider)
    assert anonymous.get("/api/v1/providers/").status_code == 401
    entries = {p["name"]: p for p in api.get("/api/v1/providers/").json()}
    entry = entries[breaker_name(http_provider)]
    assert entry["state"] == "open"
    assert entry["consecutive_failures"] == 2
    assert entry["last_error"].startswith("provider_error")
    assert entry["limits"]["failure_threshold"] == 2
    assert "sk-test-not-a-real-key" not in str(entries)


def test_metrics_export_breaker_state(client, api, make_program, http_provider):
    open_breaker(api, make_program(), http_provider)
    exposed = client.get("/metrics").content.decode()
    label = re.escape(breaker_name(http_provider))
    assert re.search(rf'dspex_circuit_breaker_state\{{provider="{label}"\}} 2\.0', exposed)
    assert re.search(rf'dspex_circuit_breaker_failures\{{provider="{label}"\}} 2\.0', exposed)


def test_operators_reset_a_breaker_from_the_admin_and_it_is_audited(client, api, make_program, http_provider):
    open_breaker(api, make_program(), http_provider)
    name = breaker_name(http_provider)
    viewer = ViewerFactory(username="viewer")
    client.force_login(viewer)
    page = client.get("/admin/providers/")
    assert page.status_code == 200 and name in page.content.decode()
    assert client.post("/admin/providers/", {"name": name}).status_code == 403
    assert resilience.status(name)["state"] == "open"

    operator = OperatorFactory(username="oper")
    client.force_login(operator)
    assert client.post("/admin/providers/", {"name": name}).status_code == 302

    assert resilience.status(name)["state"] == "closed"
    event = AuditEvent.objects.get(action="reset_circuit_breaker")
    assert (event.channel, event.object_id, event.actor_name) == ("admin", name, "oper")
    assert event.changes == {"state": {"from": "open", "to": "closed"}}


def test_the_providers_page_needs_a_staff_login(client):
    response = client.get("/admin/providers/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_a_spent_program_budget_refuses_new_executions(api, make_program, http_provider, settings):
    program = make_program()
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1000, "completion": 1000},
    }
    settings.DSPEX_BUDGETS = {"programs": {str(program.id): {"daily": 0.001}}}
    budgets.invalidate()
    assert execute(api, program, "first").status_code == 200

    response = execute(api, program, "second")

    assert response.status_code == 402
    body = response.json()
    assert body["code"] == "budget_exceeded" and "daily budget" in body["detail"]
    other = make_program(name="other")
    assert execute(api, other, "unaffected").status_code == 200


def test_a_provider_budget_stops_runs_in_progress_and_is_exported(
    client, api, make_program, http_provider, settings
):
    from executions import runner

    program = make_program()
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1000, "completion": 1000},
    }
    settings.DSPEX_BUDGETS = {"providers": {"openai": {"monthly": 0.001}}}
    budgets.invalidate()
    waiting = runner.create_execution(program, {"question": "created before the money ran out"})
    assert execute(api, program, "spends the budget").status_code == 200

    outcome = runner.run_execution(waiting.id)

    assert outcome.execution.status == "failed"
    assert outcome.execution.error["type"] == "budget_exceeded"
    refused = execute(api, program, "after")
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exceeded")
    exposed = client.get("/metrics").content.decode()
    assert 'dspex_budget_exceeded{period="monthly",scope="provider",target="openai"} 1.0' in exposed
