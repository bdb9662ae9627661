"""Fault suite: real workers, the simulated provider over HTTP, a private Redis (README "Faults").

For every fault: no execution lost or stuck, every failure recorded with a clear error type, and
breaker and retry counts as designed. Each test is bounded (deadlines well under 90 s).
"""

import json

import pytest
import requests

from dspex_site.beat import sync_schedules
from executions.models import CognitiveExecution
from llm import resilience
from tests.support import RedisServer, process_env, sim_env, start_beat, start_worker, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FINAL = {"succeeded", "failed"}


@pytest.fixture
def sim(transactional_db, simlm):
    simlm.reset()
    requests.post(f"http://127.0.0.1:{simlm.port}/_sim/reset", timeout=5).raise_for_status()
    yield simlm
    simlm.reset()


def worker_for(sim, limits: dict, **extra: object):
    env = sim_env(
        sim,
        DSPEX_RETRY_BACKOFF_BASE_S="0.05",
        DSPEX_PROVIDER_LIMITS=json.dumps({"openai": limits}),
        **extra,
    )
    return start_worker(queues="llm_calls,priority", env=env)


def submit(api, program, count: int, tag: str) -> list[str]:
    ids = []
    for i in range(count):
        response = api.post(
            f"/api/v1/programs/{program.id}/execute/",
            {"input": {"question": f"{tag} question {i}?"}, "cache": False},
            format="json",
        )
        assert response.status_code == 202, response.json()
        ids.append(response.json()["id"])
    return ids


def all_final(ids: list[str], timeout: float, what: str) -> list[CognitiveExecution]:
    def done() -> list | None:
        rows = list(CognitiveExecution.objects.filter(id__in=ids))
        return rows if len(rows) == len(ids) and all(r.status in FINAL for r in rows) else None

    return wait_for(done, timeout, what, interval=0.3)


def types(execution: CognitiveExecution) -> list[str]:
    return [e["type"] for e in execution.errors]


def breaker(sim) -> dict:
    return resilience.status(resilience.endpoint_name("openai", sim.base_url))


def test_half_of_the_calls_fail_with_5xx(api, make_program, sim, settings):
    sim.configure(error_rate=0.5)
    worker = worker_for(sim, {"failure_threshold": 50})
    try:
        ids = submit(api, make_program(), 20, "flaky")
        rows = all_final(ids, 80, "20 executions at 50% 5xx to finish")
    finally:
        worker.stop()
    for row in rows:
        assert set(types(row)) <= {"provider_error"}, row.errors
        if row.status == "succeeded":
            assert len(row.errors) == row.attempts - 1  # one recorded error per retried attempt
        else:
            assert (row.attempts, row.error["type"]) == (5, "provider_error")
    assert sum(r.status == "succeeded" for r in rows) >= 16
    # One provider request per attempt: nothing retries underneath the task layer.
    assert sim.stats()["requests"] == sum(r.attempts for r in rows)


def test_an_open_breaker_requeues_without_spending_attempts_then_recovers(api, make_program, sim, settings):
    settings.DSPEX_PROVIDER_LIMITS = {"openai": {"failure_threshold": 3, "reset_timeout_s": 2}}
    sim.configure(error_rate=1.0)
    worker = worker_for(sim, settings.DSPEX_PROVIDER_LIMITS["openai"])
    try:
        ids = submit(api, make_program(), 6, "outage")
        wait_for(
            lambda: (
                CognitiveExecution.objects.filter(
                    id__in=ids, errors__contains=[{"type": "circuit_open"}]
                ).count()
                >= 3
            ),
            40,
            "executions to be refused by the open breaker",
        )
        assert breaker(sim)["state"] in {"open", "half_open"}
        sim.configure(error_rate=0)  # the provider recovers: the next trial call closes the breaker
        rows = all_final(ids, 60, "the executions to succeed after recovery")
    finally:
        worker.stop()
    assert all(r.status == "succeeded" for r in rows), [r.error for r in rows]
    for row in rows:
        # circuit_open re-queues give the attempt back; only real provider failures spend one.
        assert row.attempts == 1 + types(row).count("provider_error"), row.errors
        assert all(e["retry_after"] <= 2 for e in row.errors if e["type"] == "circuit_open")
    provider_errors = sum(types(r).count("provider_error") for r in rows)
    refused = sum(types(r).count("circuit_open") for r in rows)
    assert refused >= 3
    assert sim.stats()["requests"] == provider_errors + len(rows)  # refused calls never reached it
    assert breaker(sim)["state"] == "closed" and breaker(sim)["times_opened"] >= 1


def test_all_calls_rate_limited_with_retry_after(api, make_program, sim, settings):
    sim.configure(rate_limit_rate=1.0, retry_after_s=1)
    worker = worker_for(sim, {"failure_threshold": 2})
    try:
        ids = submit(api, make_program(), 5, "throttled")
        wait_for(
            lambda: all(
                types(r).count("rate_limited") >= 2 for r in CognitiveExecution.objects.filter(id__in=ids)
            ),
            40,
            "every execution to be refused twice",
        )
        sim.configure(rate_limit_rate=0)
        rows = all_final(ids, 40, "the executions to succeed")
    finally:
        worker.stop()
    for row in rows:
        assert row.status == "succeeded" and row.attempts == 1, row.errors
        assert set(types(row)) == {"rate_limited"}
        assert all(e["retry_in_s"] == 1 for e in row.errors)
    info = breaker(sim)
    assert (info["state"], info["consecutive_failures"]) == ("closed", 0)  # 429s never trip it


def test_ten_second_latency_spikes_time_out_and_are_retried(api, make_program, sim, settings):
    sim.configure(spike_rate=0.3, spike_ms=10_000)
    worker = worker_for(sim, {"failure_threshold": 10}, DSPEX_LM_TIMEOUT_S="2")
    try:
        ids = submit(api, make_program(), 8, "spiky")
        rows = all_final(ids, 80, "the executions to finish despite 10 s spikes")
    finally:
        worker.stop()
    assert all(r.status == "succeeded" for r in rows), [r.error for r in rows]
    for row in rows:
        assert set(types(row)) <= {"provider_unavailable"}, row.errors
        assert row.attempts == 1 + len(row.errors)
    assert sum(len(r.errors) for r in rows) >= 1  # at least one spike hit and was retried


def test_malformed_replies_fail_at_once_and_do_not_trip_the_breaker(api, make_program, sim, settings):
    sim.configure(malformed_rate=1.0)
    worker = worker_for(sim, {"failure_threshold": 2})
    try:
        ids = submit(api, make_program(), 4, "garbled")
        rows = all_final(ids, 40, "the executions to fail")
    finally:
        worker.stop()
    for row in rows:
        assert (row.status, row.attempts, types(row)) == ("failed", 1, ["unparseable_response"])
    assert breaker(sim)["consecutive_failures"] == 0  # the provider answered: not its failure
    assert sim.stats()["requests"] == 2 * len(rows)  # ChatAdapter, then DSPy's JSONAdapter fallback


def test_redis_killed_and_restarted_fails_open_and_recovers(api, make_program, http_provider, settings):
    server = RedisServer()
    try:
        for alias in ("default", "llm"):
            settings.CACHES = {**settings.CACHES, alias: {**settings.CACHES[alias], "LOCATION": server.url}}
        settings.DSPEX_CACHE_RETRY_AFTER_S = 0.5
        settings.DSPEX_PROVIDER_LIMITS = {"openai": {"failure_threshold": 2, "reset_timeout_s": 60}}
        resilience._redis.skip_until = 0.0
        program = make_program()

        def run(question: str) -> dict:
            body = {"input": {"question": question}, "wait": True}
            return api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json").json()

        http_provider.configure(error_rate=1.0)
        assert [run(f"down {i}")["error"]["type"] for i in range(3)] == [
            "provider_error",
            "provider_error",
            "circuit_open",
        ]
        http_provider.configure(error_rate=0)
        server.stop()
        errors_before = resilience.REDIS_ERRORS._value.get()
        outage = [run(f"no redis {i}") for i in range(3)]
        assert [r["status"] for r in outage] == ["succeeded"] * 3  # fail open: breaker state unreachable
        assert resilience.REDIS_ERRORS._value.get() > errors_before
        assert breaker(http_provider)["state"] == "unknown"

        server.start()  # an empty Redis: the breaker starts closed again
        resilience._redis.skip_until = 0.0
        assert run("redis back")["status"] == "succeeded"
        assert breaker(http_provider)["state"] == "closed"
    finally:
        server.close()


def test_a_worker_killed_mid_batch_loses_nothing_and_frees_its_bulkhead_slots(
    api, make_program, sim, settings, tmp_path
):
    sim.configure(latency_ms=1500)
    settings.DSPEX_REAP_INTERVAL_S = 2
    sync_schedules()
    limits = {"max_concurrent": 2, "call_timeout_s": 3, "max_wait_s": 1}
    # A killed worker also loses the messages it had prefetched (back only after the broker's 5 h
    # visibility timeout): the reaper republishes pending rows older than DSPEX_PENDING_STALE_S.
    extra = {"DSPEX_HEARTBEAT_S": "1", "DSPEX_HEARTBEAT_STALE_S": "5", "DSPEX_PENDING_STALE_S": "10"}
    doomed = worker_for(sim, limits, **extra)
    survivor = beat = None
    try:
        response = api.post(
            "/api/v1/batches/",
            {"program": str(make_program().id), "inputs": [{"question": f"b{i}?"} for i in range(8)]},
            format="json",
        )
        assert response.status_code == 202, response.json()
        batch_id = response.json()["id"]
        wait_for(
            lambda: CognitiveExecution.objects.filter(batch_id=batch_id, status="running").exists(),
            30,
            "the batch to start",
        )
        doomed.kill()  # mid-call, holding bulkhead slots it will never release
        survivor = worker_for(sim, limits, **extra)
        env = process_env(**sim_env(sim, **extra))
        beat = start_beat(env, tmp_path)
        reaper = start_worker(queues="cleanup", env=env)
        try:
            ids = list(CognitiveExecution.objects.filter(batch_id=batch_id).values_list("id", flat=True))
            try:
                rows = all_final(ids, 85, "every execution of the batch to finish")
            except AssertionError as exc:
                states = CognitiveExecution.objects.filter(id__in=ids).values_list(
                    "status", "attempts", "errors"
                )
                raise AssertionError(f"{exc}: {list(states)}") from None
        finally:
            reaper.stop()
    finally:
        if doomed.proc.poll() is None:
            doomed.kill()
        if beat is not None:
            stop(beat)
        if survivor is not None:
            survivor.stop()
    assert len(rows) == 8
    assert all(r.status == "succeeded" for r in rows), [(r.status, r.error, r.errors) for r in rows]
    assert breaker(sim)["in_flight"] == 0
