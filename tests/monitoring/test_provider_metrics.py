"""Metrics per provider and deployment, and per fallback: telemetry events emitted through the
real emitter come out of `/metrics`, next to the per-model series that stay as they were."""

import pytest

from monitoring import telemetry
from tests.monitoring.test_metrics import sample, scrape

pytestmark = pytest.mark.django_db


def test_requests_and_latency_are_counted_per_deployment_that_answered(client):
    before = scrape(client)
    # A model alias answered by one of its deployments, twice, and a failed request.
    routed = {"provider": "eu", "model": "smart", "deployment": "eu/gpt-4o"}
    telemetry.emit("llm.request.stop", {"duration_ms": 40.0}, {**routed, "status": "ok"})
    telemetry.emit("llm.request.stop", {"duration_ms": 700.0}, {**routed, "status": "ok"})
    telemetry.emit("llm.request.stop", {"duration_ms": 5.0}, {**routed, "status": "error"})
    # No deployment in the metadata (embeddings, older emitters): the model answered.
    telemetry.emit(
        "llm.request.stop", {"duration_ms": 10.0}, {"provider": "us", "model": "us/gpt-4o", "status": "ok"}
    )
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    requests = "dspex_llm_deployment_requests_total"
    assert delta(requests, provider="eu", deployment="eu/gpt-4o", status="ok") == 2
    assert delta(requests, provider="eu", deployment="eu/gpt-4o", status="error") == 1
    assert delta(requests, provider="us", deployment="us/gpt-4o", status="ok") == 1
    duration = "dspex_llm_deployment_request_duration_seconds"
    assert delta(f"{duration}_count", provider="eu", deployment="eu/gpt-4o") == 3
    assert delta(f"{duration}_sum", provider="eu", deployment="eu/gpt-4o") == pytest.approx(0.745)
    assert delta(f"{duration}_bucket", provider="eu", deployment="eu/gpt-4o", le="0.05") == 2
    # The existing series keep their labels: by provider and the model asked for.
    assert delta("dspex_llm_request_total", provider="eu", model="smart", status="ok") == 2
    assert delta("dspex_llm_request_duration_seconds_count", provider="eu", model="smart") == 3


def test_fallbacks_are_counted_by_model_fallback_and_reason(client):
    before = scrape(client)
    for reason in ("circuit_open", "circuit_open", "rate_limited"):
        telemetry.emit("llm.fallback", {}, {"model": "eu/gpt-4o", "fallback": "us/gpt-4o", "reason": reason})
    telemetry.emit("llm.fallback", {}, {"model": "us/gpt-4o", "fallback": "sim/default", "reason": "timeout"})
    after = scrape(client)

    def delta(**labels: str) -> float:
        return sample(after, "dspex_llm_fallbacks_total", **labels) - sample(
            before, "dspex_llm_fallbacks_total", **labels
        )

    assert delta(model="eu/gpt-4o", fallback="us/gpt-4o", reason="circuit_open") == 2
    assert delta(model="eu/gpt-4o", fallback="us/gpt-4o", reason="rate_limited") == 1
    assert delta(model="us/gpt-4o", fallback="sim/default", reason="timeout") == 1


def test_a_real_call_counts_under_its_deployment(client, api, make_program):
    program = make_program(name="deployment-qa")
    before = scrape(client)
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "where?"}, "wait": True},
        format="json",
    )
    assert response.status_code == 200
    after = scrape(client)
    name = "dspex_llm_deployment_requests_total"
    labels = {"provider": "sim", "deployment": "sim/default", "status": "ok"}
    assert sample(after, name, **labels) - sample(before, name, **labels) == 1
