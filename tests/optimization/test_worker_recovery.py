"""A worker killed mid-run: another worker takes the run over and replays finished LM calls from the cache."""

import time

import psutil
import pytest
from django.core.cache import caches

from optimization.models import OptimizationRun
from optimization.tasks import reap_stale_runs
from tests.support import start_worker

pytestmark = pytest.mark.broker  # run on Redis and again on RabbitMQ


def kill_tree(worker) -> None:
    """SIGKILL the worker and its pool processes at once, as a lost machine would."""
    parent = psutil.Process(worker.proc.pid)
    for proc in [*parent.children(recursive=True), parent]:
        proc.kill()
    worker.proc.wait()


def wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_worker_run_is_retried_elsewhere_replaying_cached_calls(
    api, classifier, tickets, http_provider, settings, transactional_db
):
    http_provider.configure(latency_ms=40)
    env = {
        "DSPEX_LM": "openai/sim-default",
        "DSPEX_LM_API_BASE": http_provider.base_url,
        "DSPEX_LM_API_KEY": "sk-test-not-a-real-key",
        "DSPEX_OPTIMIZATION_THREADS": "1",
        "DSPEX_OPTIMIZATION_HEARTBEAT_S": "0.5",
    }
    first = start_worker(queues="optimization", pool="prefork", concurrency=1, env=env)
    try:
        body = {
            "optimizer": "BootstrapFewShot",
            "dataset": str(tickets.id),
            "metric": "exact_match",
            "config": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4},
            "split": {"seed": 0, "dev_fraction": 0.5},
        }
        response = api.post(f"/api/v1/programs/{classifier.id}/optimize/", body, format="json")
        assert response.status_code == 202
        run_id = response.json()["id"]
        wait_for(lambda: OptimizationRun.objects.get(id=run_id).progress.get("lm_calls", 0) >= 30)
    finally:
        kill_tree(first)
    paid_before_kill = OptimizationRun.objects.get(id=run_id).progress["lm_calls"]
    settings.DSPEX_OPTIMIZATION_STALE_S = 1
    time.sleep(1.5)
    assert reap_stale_runs() == 1
    second = start_worker(queues="optimization", pool="prefork", concurrency=1, env=env)
    try:
        run = wait_for(lambda: (r := OptimizationRun.objects.get(id=run_id)).is_finished and r)
    finally:
        second.stop()
        http_provider.reset()
    assert run.status == "succeeded", run.error
    assert run.attempts == 2
    metrics = run.result.performance_metrics
    share = metrics["cache_hits"] / metrics["lm_calls"]
    print(
        f"attempt 2: {metrics['cache_hits']} of {metrics['lm_calls']} LM calls replayed ({share:.0%}); "
        f"attempt 1 had made {paid_before_kill}"
    )
    assert metrics["cache_hits"] >= paid_before_kill - 2  # the call in flight at the kill may be lost
    assert metrics["optimized_score"] > metrics["baseline_score"]
    assert caches["llm"] is not None
