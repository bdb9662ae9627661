"""Stopping runs: cancel within seconds, a time limit and a cost budget that keep the best so far."""

import threading
import time

import pytest
from django.db import connection

from optimization import runner
from optimization.models import OptimizationRun

SPLIT = {"seed": 0, "dev_fraction": 0.5}


@pytest.fixture
def http_qa(make_program, http_provider):
    """The context QA program on the simulated provider over HTTP, 60 ms per call."""
    http_provider.configure(latency_ms=60)
    pipeline = {
        "lm": {"model": "$var.model", "temperature": "$var.temperature"},
        "steps": [
            {
                "name": "answer",
                "module": "Predict",
                "signature": "context: list[str], question: str -> answer: str",
                "instructions": "Answer the question from the context.",
                "inputs": {"context": "$input.context", "question": "$input.question"},
            }
        ],
    }
    choices = ["openai/sim-default", "openai/sim-concise"]
    variables = {
        "model": {"type": "choice", "choices": choices, "default": choices[0]},
        "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 1},
    }
    return make_program(name="http-qa", pipeline=pipeline, variables=variables)


def start(api, program, dataset, **extra) -> str:
    body = {
        "optimizer": "VariableSearch",
        "dataset": str(dataset.id),
        "metric": "normalized_exact_match",
        "split": SPLIT,
        **extra,
    }
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", body, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def test_a_running_run_is_cancelled_within_seconds(api, http_qa, qa, transactional_db, settings):
    settings.DSPEX_OPTIMIZATION_HEARTBEAT_S = 0.3
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    run_id = start(api, http_qa, qa)

    def work() -> None:
        try:
            runner.run_optimization(run_id)
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 30
    while OptimizationRun.objects.get(id=run_id).progress.get("lm_calls", 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert api.post(f"/api/v1/optimizations/{run_id}/cancel/").status_code == 200
    cancelled_at = time.monotonic()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert time.monotonic() - cancelled_at < 3
    run = OptimizationRun.objects.get(id=run_id)
    assert run.status == "cancelled" and run.result is None
    assert run.progress["phase"] == "cancelled" and run.message == "Cancelled by request."


def test_the_time_limit_stops_a_run_and_keeps_the_best_candidate(
    api, http_qa, qa, settings, transactional_db
):
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    settings.DSPEX_OPTIMIZATION_HEARTBEAT_S = 0.5
    # Baseline: 15 dev calls (~1 s); then 6 combinations of 15 train calls each (~6 s): 4 s stops
    # the search after at least one combination was scored.
    run = runner.run_optimization(start(api, http_qa, qa, time_limit_s=4))
    assert run.status == "succeeded", run.error
    metrics = run.result.performance_metrics
    assert metrics["stopped_by"] == "time_limit"
    assert run.progress["trials_done"] < run.progress["trials_total"]
    assert metrics["candidate_score"] is not None and "time limit" in run.message


def test_a_cost_budget_stops_a_run(api, context_qa, qa, settings):
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    settings.DSPEX_PRICES = {"sim": {"prompt": 1000.0, "completion": 1000.0}}  # ~ $0.3 per call
    run = runner.run_optimization(start(api, context_qa, qa, cost_budget_usd=8.0, config={"steps": 2}))
    assert run.status == "succeeded", run.error
    metrics = run.result.performance_metrics
    assert metrics["stopped_by"] == "cost_budget"
    assert 8.0 <= metrics["cost_usd"] < 8.5
    assert run.progress["trials_done"] < 4
