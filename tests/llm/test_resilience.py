"""Circuit breakers, rate limits and bulkheads shared through the real Redis, across processes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm import resilience
from llm.errors import RATE_LIMIT, TRANSIENT, classify

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "http://provider.test/v1"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_admission(settings: object) -> None:
    resilience._redis.skip_until = 0.0
    settings.DSPEX_PROVIDER_LIMITS = {}


def limits(settings: object, **per_provider: dict) -> None:
    settings.DSPEX_PROVIDER_LIMITS = per_provider


def fail(provider: str, error: str = "provider_error: HTTP 500") -> None:
    resilience.admit(provider, ENDPOINT).finish(failure=error)


def name(provider: str) -> str:
    return resilience.endpoint_name(provider, ENDPOINT)


def probes(provider: str, processes: int, threads: int, calls: int, traffic: str, limits: dict) -> list:
    """Run probe processes asking for admissions concurrently; their outcome counts."""
    env = {
        **os.environ,
        "DSPEX_PROVIDER_LIMITS": json.dumps(limits),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    start_at = str(time.time() + 4)  # all processes start asking at once, after Django set-up
    args = [provider, ENDPOINT, str(threads), str(calls), traffic, start_at]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.llm.resilience_probe", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def total(results: list, outcome: str) -> int:
    return sum(r.get(outcome, 0) for r in results)


# --- circuit breaker --------------------------------------------------------------------------
def test_it_opens_after_consecutive_transient_failures_and_fails_fast(settings):
    limits(settings, cb1={"failure_threshold": 3, "reset_timeout_s": 60})
    for _ in range(3):
        fail("cb1")
    with pytest.raises(resilience.CircuitOpenError) as refused:
        resilience.admit("cb1", ENDPOINT)
    assert 55 < refused.value.retry_after <= 60
    info = resilience.status(name("cb1"))
    assert info["state"] == "open"
    assert info["consecutive_failures"] == 3
    assert info["last_error"] == "provider_error: HTTP 500"


def test_a_success_resets_the_consecutive_failure_count(settings):
    limits(settings, cb2={"failure_threshold": 3})
    fail("cb2")
    fail("cb2")
    resilience.admit("cb2", ENDPOINT).finish(failure=None)
    fail("cb2")
    fail("cb2")
    assert resilience.status(name("cb2"))["state"] == "closed"
    assert resilience.admit("cb2", ENDPOINT).trial is False


def test_circuit_open_is_classified_like_a_rate_limit_with_the_remaining_open_time():
    failure = classify(resilience.CircuitOpenError("openai@api.example", 42.5))
    assert (failure.kind, failure.type, failure.retry_after) == (RATE_LIMIT, "circuit_open", 42.5)


def test_our_database_failing_inside_an_lm_call_is_not_blamed_on_the_provider():
    """A pool timeout raised inside DSPy's LM call (a budget refresh there) reaches the runner
    wrapped as an LMError: it is `database_unavailable` and retried, not `provider_error`."""
    from django.db import OperationalError
    from dspy.clients.errors import error_boundary

    with pytest.raises(Exception) as raised, error_boundary("openai/sim-default", unexpected=True):
        raise OperationalError("couldn't get a connection after 5.00 sec")
    failure = classify(raised.value)
    assert (failure.kind, failure.type) == (TRANSIENT, "database_unavailable")
    assert "couldn't get a connection" in failure.message


def test_half_open_grants_exactly_one_trial_across_processes(settings):
    policy = {"failure_threshold": 1, "reset_timeout_s": 1, "call_timeout_s": 60}
    limits(settings, cb3=policy)
    fail("cb3")
    time.sleep(1.1)
    results = probes("cb3", processes=3, threads=4, calls=3, traffic="batch", limits={"cb3": policy})
    assert total(results, "trial") == 1
    assert total(results, "granted") == 0
    assert total(results, "circuit_open") == 3 * 4 * 3 - 1
    assert resilience.status(name("cb3"))["state"] == "half_open"


def test_a_dead_trials_lease_is_granted_again_and_its_success_closes_the_breaker(settings):
    limits(settings, cb4={"failure_threshold": 1, "reset_timeout_s": 0.5, "call_timeout_s": 0.5})
    fail("cb4")
    time.sleep(0.6)
    abandoned = resilience.admit("cb4", ENDPOINT)  # its process "dies": never finished
    assert abandoned.trial
    with pytest.raises(resilience.CircuitOpenError):
        resilience.admit("cb4", ENDPOINT)
    time.sleep(1.6)  # lease = call timeout + 1 s
    trial = resilience.admit("cb4", ENDPOINT)
    assert trial.trial
    trial.finish(failure=None)
    assert resilience.status(name("cb4"))["state"] == "closed"
    assert resilience.admit("cb4", ENDPOINT).trial is False


def test_a_failed_trial_opens_the_breaker_again(settings):
    limits(settings, cb5={"failure_threshold": 2, "reset_timeout_s": 0.5})
    fail("cb5")
    fail("cb5")
    time.sleep(0.6)
    trial = resilience.admit("cb5", ENDPOINT)
    assert trial.trial
    trial.finish(failure="provider_unavailable: timed out")
    with pytest.raises(resilience.CircuitOpenError):
        resilience.admit("cb5", ENDPOINT)
    info = resilience.status(name("cb5"))
    assert (info["state"], info["times_opened"]) == ("open", 2)


def test_an_admin_reset_closes_the_breaker(settings):
    limits(settings, cb6={"failure_threshold": 1})
    fail("cb6")
    resilience.reset(name("cb6"))
    assert resilience.admit("cb6", ENDPOINT).trial is False
    assert resilience.status(name("cb6"))["consecutive_failures"] == 0


# --- rate limits ------------------------------------------------------------------------------
def test_processes_share_one_request_budget(settings):
    policy = {"rpm": 20, "max_wait_s": 0}
    started = time.monotonic()
    results = probes("rl1", processes=3, threads=3, calls=5, traffic="interactive", limits={"rl1": policy})
    elapsed = time.monotonic() - started
    granted = total(results, "granted")
    # 45 asked across 3 processes: only the bucket (20) plus what refilled meanwhile (20/min) pass.
    assert 20 <= granted <= 20 + int(elapsed * 20 / 60) + 1, (granted, elapsed)
    assert total(results, "rate_limited") == 45 - granted


def test_interactive_traffic_may_take_the_reserve_batch_may_not(settings):
    limits(settings, rl2={"rpm": 10, "max_wait_s": 0})
    settings.DSPEX_RATE_LIMIT_RESERVE = 0.2
    batch_granted = 0
    with resilience.traffic(resilience.BATCH):
        for _ in range(10):
            try:
                resilience.admit("rl2", ENDPOINT)
                batch_granted += 1
            except resilience.RateLimitedError:
                pass
    assert batch_granted == 8
    with resilience.traffic(resilience.INTERACTIVE):
        resilience.admit("rl2", ENDPOINT)
        resilience.admit("rl2", ENDPOINT)
        with pytest.raises(resilience.RateLimitedError) as refused:
            resilience.admit("rl2", ENDPOINT)
    assert 0 < refused.value.retry_after <= 6.1
    assert classify(refused.value).kind == RATE_LIMIT


def test_a_call_over_the_limit_waits_up_to_the_bound(settings):
    limits(settings, rl3={"rpm": 60, "max_wait_s": 3})
    with resilience.traffic(resilience.INTERACTIVE):
        for _ in range(60):
            resilience.admit("rl3", ENDPOINT)
        started = time.monotonic()
        resilience.admit("rl3", ENDPOINT)  # one token refills per second
        waited = time.monotonic() - started
    assert 0.3 < waited < 2.5


def test_token_budget_is_corrected_by_the_reported_usage(settings):
    limits(settings, rl4={"tpm": 100, "max_wait_s": 0})
    with resilience.traffic(resilience.INTERACTIVE):
        first = resilience.admit("rl4", ENDPOINT, estimate=60)
        with pytest.raises(resilience.RateLimitedError):
            resilience.admit("rl4", ENDPOINT, estimate=60)
        first.finish(failure=None, tokens=10)  # it used 10, not 60: 50 go back
        resilience.admit("rl4", ENDPOINT, estimate=60)


# --- bulkheads --------------------------------------------------------------------------------
def test_in_flight_calls_are_bounded_and_optimization_has_its_own_share(settings):
    limits(settings, bh1={"max_concurrent": 2, "max_concurrent_optimization": 1, "max_wait_s": 0.3})
    first, _second = resilience.admit("bh1", ENDPOINT), resilience.admit("bh1", ENDPOINT)
    started = time.monotonic()
    with pytest.raises(resilience.BulkheadFullError):
        resilience.admit("bh1", ENDPOINT)
    assert time.monotonic() - started >= 0.25  # it waited for a slot before giving up
    with resilience.traffic(resilience.OPTIMIZATION):
        resilience.admit("bh1", ENDPOINT)
        with pytest.raises(resilience.BulkheadFullError):
            resilience.admit("bh1", ENDPOINT)
    first.finish(failure=None)
    resilience.admit("bh1", ENDPOINT)
    assert resilience.status(name("bh1"))["in_flight"] == 3


def test_slots_of_a_crashed_process_expire_with_the_call_timeout(settings):
    policy = {"max_concurrent": 3, "max_wait_s": 0, "call_timeout_s": 5}
    limits(settings, bh2=policy)
    results = probes("bh2", processes=2, threads=4, calls=1, traffic="batch", limits={"bh2": policy})
    assert total(results, "granted") == 3  # the probes exit without finishing: slots leak...
    assert total(results, "bulkhead_full") == 5
    assert resilience.status(name("bh2"))["in_flight"] == 3
    started = time.monotonic()

    def admitted() -> bool:
        try:
            resilience.admit("bh2", ENDPOINT)
        except resilience.BulkheadFullError:
            return False
        return True

    while not admitted():  # ...until their leases (call timeout + 1 s) run out
        assert time.monotonic() - started < 8, "leaked slots were never freed"
        time.sleep(0.2)


# --- Redis trouble ----------------------------------------------------------------------------
def test_it_fails_open_and_counts_when_redis_is_down(settings):
    limits(settings, ro1={"failure_threshold": 1, "rpm": 1})
    settings.CACHES = {
        **settings.CACHES,
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
        },
    }
    before = resilience.REDIS_ERRORS._value.get()
    ticket = resilience.admit("ro1", ENDPOINT)
    assert ticket.redis_ok is False
    ticket.finish(failure="provider_error")
    started = time.monotonic()
    for _ in range(5):  # within the skip window: no more socket attempts
        resilience.admit("ro1", ENDPOINT)
    assert time.monotonic() - started < 0.1
    assert resilience.REDIS_ERRORS._value.get() == before + 1
    assert resilience.status(name("ro1"))["state"] == "unknown"
