"""Redis high availability (`REDIS_SENTINELS`): the settings it builds, and a failover drill.

The drill starts its own Redis master, one replica and three sentinels (quorum 2, down after
1 s), simlm (one instance for synchronous runs, one for queued ones, so each counts its own
calls), gunicorn and a real Celery worker, all configured only through the sentinels (REDIS_URL
points at a port nothing listens on: anything that bypassed Sentinel would fail). Under load —
synchronous runs with the LM cache on, queued runs — it SIGKILLs the master and checks:

- synchronous runs keep answering 200 (the cache fails open meanwhile: misses, no errors);
- a queued run is accepted (its publish retries until the new master, REDIS_FAILOVER_WAIT_S) or
  refused with 503 `queue_unavailable` and a failed row, never a 500 or a pending half-row;
- every accepted queued run finishes exactly once: succeeded, one attempt, one provider call
  each (the queued simlm received exactly as many calls as there are such runs); one whose
  message the old master took with it is published again by the reaper's stale-pending sweep;
- after the failover, the breaker, the API rate-limit counter and the spend budget work on the
  new master: the budget refuses a program past its daily limit, the breaker opens;
- readiness and /metrics name the new master.

It prints the recovery time: SIGKILL of the master to the first moment synchronous runs hit the
cache again and queued runs are accepted (README, "Redis high availability").
"""

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

from bench.common import free_port
from executions.models import CognitiveExecution
from llm.models import Budget
from tests.datatier.servers import SentinelGroup
from tests.factories import TokenFactory
from tests.support import (
    ROOT,
    process_env,
    settings_in_subprocess,
    sim_env,
    start_simlm,
    start_web,
    start_worker_process,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RETRY_AFTER_S = 1.0  # DSPEX_CACHE_RETRY_AFTER_S of the drill's processes
FAILOVER_WAIT_S = 6.0  # REDIS_FAILOVER_WAIT_S of the drill's processes
# Documented bound (README "Redis high availability"): the sentinels' down-after (1 s) + the
# election and promotion (~1-2 s), then the worker's reconnect on kombu's backoff (2 s, 4 s,
# 6 s after the loss: the first that finds the new master) and the cache/admission skip window
# (RETRY_AFTER_S), with slack for a loaded machine.
RECOVERY_BOUND_S = 15.0


def settings_of(**env: str) -> dict:
    """What `dspex_site.settings` builds from this environment (or its error)."""
    base = process_env(DJANGO_DEBUG="1")
    base.pop("CELERY_BROKER_URL", None)
    expression = "{'caches': s.CACHES, 'broker': s.CELERY_BROKER_URL, 'transport': s.CELERY_BROKER_TRANSPORT}"
    return settings_in_subprocess(expression, {**base, **env})


def test_sentinel_settings_route_the_caches_and_the_broker_through_the_sentinels():
    built = settings_of(
        REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26379,10.0.0.3:26380",
        REDIS_SENTINEL_MASTER="dspex",
        REDIS_DB="3",
        REDIS_PASSWORD="p@ss/word",
        REDIS_SENTINEL_PASSWORD="sentinel-secret",
    )
    for alias in ("default", "llm", "embeddings", "optimizations"):
        cache = built["caches"][alias]
        assert cache["LOCATION"] == "redis://dspex/3"
        options = cache["OPTIONS"]
        assert options["CONNECTION_FACTORY"] == "django_redis.pool.SentinelConnectionFactory"
        assert options["SENTINELS"] == [["10.0.0.1", 26379], ["10.0.0.2", 26379], ["10.0.0.3", 26380]]
        assert options["PASSWORD"] == "p@ss/word"
        assert options["SENTINEL_KWARGS"]["password"] == "sentinel-secret"
    assert built["broker"] == ";".join(
        f"sentinel://:p%40ss%2Fword@{host}/3"
        for host in ("10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380")
    )
    assert built["transport"] == "dspex_site.broker:SentinelTransport"
    # A broker of its own (RabbitMQ) stays so; without Sentinel nothing changes.
    amqp = settings_of(
        REDIS_SENTINELS="10.0.0.1:26379", REDIS_SENTINEL_MASTER="dspex", CELERY_BROKER_URL="amqp://h:5672/v"
    )
    assert amqp["broker"] == "amqp://h:5672/v" and amqp["transport"] is None
    plain = settings_of(REDIS_URL="redis://cache.internal:6379/2")
    assert plain["caches"]["default"]["LOCATION"] == "redis://cache.internal:6379/2"
    assert "CONNECTION_FACTORY" not in plain["caches"]["default"]["OPTIONS"]
    assert plain["transport"] == "dspex_site.broker:Transport"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER must name the master"),
        (
            {"REDIS_SENTINELS": "10.0.0.1", "REDIS_SENTINEL_MASTER": "m"},
            "REDIS_SENTINELS must be a comma-separated list of host:port, and '10.0.0.1' is not",
        ),
        (
            {"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_DB": "x"},
            "REDIS_DB must be an integer",
        ),
        (
            {"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_FAILOVER_WAIT_S": "-1"},
            "REDIS_FAILOVER_WAIT_S must be 0 or more seconds",
        ),
    ],
)
def test_bad_sentinel_settings_stop_start_up_naming_the_variable(env, message):
    assert message in settings_of(**env)["error"]


def test_without_sentinel_readiness_and_metrics_name_the_one_redis(settings):
    from urllib.parse import urlparse

    from monitoring.health import CHECKS, check_redis
    from monitoring.scrape import RedisMaster

    parsed = urlparse(settings.REDIS_URL)
    if settings.REDIS_SENTINEL is not None:
        pytest.skip("this run is configured through Sentinel")
    assert check_redis() == {"mode": "single", "address": f"{parsed.hostname}:{parsed.port}"}
    assert CHECKS["redis"][1] is False  # not critical: the cache and broker checks are
    families = {family.name: family for family in RedisMaster().collect()}
    assert [s.value for s in families["dspex_redis_up"].samples] == [1.0]
    info = families["dspex_redis_master_info"].samples
    assert [(s.labels, s.value) for s in info] == [
        ({"mode": "single", "address": f"{parsed.hostname}:{parsed.port}"}, 1.0)
    ]
    assert families["dspex_redis_master_config_epoch"].samples == []  # Sentinel only


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    group = SentinelGroup(down_after_ms=1000, failover_timeout_ms=3000)
    yield group
    group.close()


class Load:
    """Synchronous runs (a few questions over and over: cache hits) and queued runs (each its
    own question) from threads, every answer recorded with its time."""

    def __init__(self, base: str, token: str, program_id: str) -> None:
        self.url = f"{base}/api/v1/programs/{program_id}/execute/"
        self.headers = {"Authorization": f"Token {token}"}
        self.sync: list[tuple[float, int, bool | None, str]] = []  # (sent at, status, cache_hit, body)
        self.queued: list[tuple[float, int, str]] = []  # (sent at, status, body)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._sync, args=(i,), daemon=True) for i in range(2)]
        self.threads.append(threading.Thread(target=self._queue, daemon=True))
        self.count = 0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _sync(self, worker: int) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        i = 0
        while not self.stopping.is_set():
            question = f"cached question {worker}-{i % 3}"
            i += 1
            sent = time.monotonic()
            response = session.post(
                self.url, json={"input": {"question": question}, "wait": True}, timeout=60
            )
            hit = None
            if response.status_code == 200:
                lm = [entry for entry in response.json().get("trace", []) if entry.get("kind") == "lm"]
                hit = bool(lm and lm[0].get("cache_hit"))
            self.sync.append((sent, response.status_code, hit, response.text[:300]))

    def _queue(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        while not self.stopping.is_set():
            self.count += 1
            body = {"input": {"question": f"queued question {self.count}"}}
            sent = time.monotonic()
            response = session.post(self.url, json=body, timeout=60)
            self.queued.append((sent, response.status_code, response.text[:300]))
            time.sleep(0.1)


def reap_stale_pending(env: dict) -> str:
    """Run the reaper once in a process configured like the others (through the sentinels),
    with every pending row counting as stale: what beat's `executions.reap` does on schedule."""
    script = "import django; django.setup(); from executions.housekeeping import reap; print(reap())"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "DSPEX_PENDING_STALE_S": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_a_master_killed_under_load_fails_over_without_losing_or_repeating_work(
    make_program, operator, transactional_db, sentinels, simlm
):
    program = make_program(name="failover-drill")
    budgeted = make_program(name="failover-budget")
    breaker_program = make_program(name="failover-breaker")
    # A program budget small enough that one call spends it (DSPEX_PRICES below makes calls dear).
    Budget.objects.create(scope=Budget.Scope.PROGRAM, program=budgeted, daily_limit_usd=Decimal("0.0001"))
    token = TokenFactory(user=operator).key
    simlm.reset()
    sim_sync, sim_queued = simlm, start_simlm()  # the session's simlm serves the web's runs
    old_master = sentinels.master_port()
    assert old_master == sentinels.servers[0]

    def env_for(simlm) -> dict:
        env = process_env(
            **sim_env(simlm),
            **sentinels.env(),
            # Nothing may bypass Sentinel: the plain URL points at a port nobody listens on.
            REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
            DSPEX_CACHE_RETRY_AFTER_S=str(RETRY_AFTER_S),
            REDIS_FAILOVER_WAIT_S=str(FAILOVER_WAIT_S),
            DSPEX_BREAKER_FAILURES="3",
            DSPEX_PRICES=json.dumps({"openai/sim-default": {"prompt": 100.0, "completion": 100.0}}),
        )
        env.pop("CELERY_BROKER_URL", None)  # the broker too goes through the sentinels
        return env

    web_env, worker_env = env_for(sim_sync), env_for(sim_queued)
    web, base = start_web(web_env)
    worker_log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally below
    worker = start_worker_process(
        worker_env, queues="llm_calls,priority,default", concurrency=8, output=worker_log
    )
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    load = Load(base, token, str(program.id))

    def ready_redis() -> dict:
        return requests.get(f"{base}/health/ready", timeout=10).json()["checks"]["redis"]

    try:
        check = wait_for(
            lambda: ready_redis()["status"] == "ok" and ready_redis(), 30, "readiness through Sentinel"
        )
        assert check["mode"] == "sentinel" and check["address"] == f"127.0.0.1:{old_master}"
        assert check["sentinels_answering"] == 3 and check["critical"] is False
        # The worker's heartbeat (through Sentinel too) is on the master; the worker consumes.
        master_of_old = sentinels.server(old_master)
        wait_for(
            lambda: master_of_old.hlen("dspex:workers:llm_calls"), 30, "the worker's heartbeat on the master"
        )

        load.start()
        wait_for(
            lambda: sum(1 for s in load.sync if s[2]) >= 4 and len(load.queued) >= 5,
            30,
            "load with cache hits",
        )
        killed_at, killed_wall = time.monotonic(), time.time()
        sentinels.kill(old_master)

        def recovered() -> bool:
            now = [s for s in load.sync if s[0] > killed_at]
            queued = [q for q in load.queued if q[0] > killed_at]
            return (
                sentinels.master_port() == sentinels.servers[1]
                and any(s[2] for s in now)
                and any(q[1] == 202 for q in queued)
            )

        wait_for(recovered, 30, "the promoted replica to serve", interval=0.05)
        time.sleep(2.0)  # load keeps flowing on the new master
        load.stop()

        # Synchronous runs never failed: the cache failed open (misses) while Redis was away.
        bad_sync = [s for s in load.sync if s[1] != 200]
        assert not bad_sync, bad_sync[:3]
        assert any(s[2] is False for s in load.sync if s[0] > killed_at), "no cache miss during the failover?"
        # Queued runs: accepted, or refused with the clear error and a failed row; never a 500.
        statuses = {q[1] for q in load.queued}
        assert statuses <= {202, 503}, [q for q in load.queued if q[1] not in (202, 503)][:3]
        for _, status, body in load.queued:
            if status == 503:
                assert json.loads(body)["code"] == "queue_unavailable", body
        accepted = [json.loads(body)["id"] for _, status, body in load.queued if status == 202]
        refused = [q for q in load.queued if q[1] == 503]
        queued_rows = CognitiveExecution.objects.filter(
            program=program, input__question__startswith="queued "
        )
        assert queued_rows.count() == len(load.queued)  # one row per request, accepted or not
        assert queued_rows.filter(status="failed", error__type="queue_unavailable").count() == len(refused)

        def finished() -> bool:
            rows = CognitiveExecution.objects.filter(id__in=accepted)
            return not rows.exclude(status="succeeded").exists()

        try:
            wait_for(finished, 20, "every accepted queued run to finish")
        except AssertionError:
            # A message the old master acknowledged but never replicated is gone with it: its row
            # is still pending, and the reaper's stale-pending sweep publishes it again.
            pending = CognitiveExecution.objects.filter(id__in=accepted, status="pending").count()
            reaped = reap_stale_pending(worker_env)
            print(f"redis failover drill: {pending} accepted runs lost their message; reaping: {reaped}")
            try:
                wait_for(finished, 30, "every accepted queued run to finish after the reaper")
            except AssertionError:
                rows = CognitiveExecution.objects.filter(id__in=accepted).values_list(
                    "status", "attempts", "error"
                )
                raise AssertionError(f"accepted queued runs unfinished: {sorted(rows, key=str)}") from None
        rows = list(CognitiveExecution.objects.filter(id__in=accepted).values_list("status", "attempts"))
        assert len(rows) == len(accepted) and set(rows) == {("succeeded", 1)}, rows
        time.sleep(1.0)  # a duplicate delivery would have run by now
        assert sim_queued.requests() == len(accepted), (sim_queued.stats(), len(accepted))
        # Recovered: the first moment when synchronous runs hit the cache again, queued runs are
        # accepted again and the worker takes queued runs again (it reconnects on kombu's
        # backoff: 2 s, then 4 s more, ...).
        first_hit = min(s[0] for s in load.sync if s[0] > killed_at and s[2]) - killed_at
        first_accepted = min(q[0] for q in load.queued if q[0] > killed_at and q[1] == 202) - killed_at
        started = CognitiveExecution.objects.filter(id__in=accepted).values_list("started_at", flat=True)
        first_started = min(t.timestamp() for t in started if t.timestamp() > killed_wall + 0.1) - killed_wall
        recovery_s = max(first_hit, first_accepted, first_started)
        print(
            f"\nredis failover drill: master SIGKILLed -> executions flowing normally in {recovery_s:.2f} s "
            f"(cache hits again after {first_hit:.2f} s, queued runs accepted after {first_accepted:.2f} s, "
            f"taken by the worker after {first_started:.2f} s)"
        )
        assert recovery_s < RECOVERY_BOUND_S, recovery_s
        print(
            f"redis failover drill: {len(load.sync)} sync runs (all 200), {len(accepted)} queued runs "
            f"accepted and each run once, {len(refused)} refused with 503"
            + "".join(f"\n  refused {t - killed_at:+.2f} s after the kill: {body}" for t, _, body in refused)
        )

        # Readiness and /metrics name the new master.
        new_master = sentinels.servers[1]
        check = wait_for(
            lambda: ready_redis()["status"] == "ok" and ready_redis(), 10, "readiness after failover"
        )
        assert check["address"] == f"127.0.0.1:{new_master}" and check["config_epoch"] >= 1
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert f'dspex_redis_master_info{{address="127.0.0.1:{new_master}",mode="sentinel"}} 1.0' in metrics
        assert "dspex_redis_up 1.0" in metrics

        master = sentinels.server(new_master)
        # The API rate limit counts on the new master again.
        throttle = [k for k in master.scan_iter(match="*throttle*") if int(master.get(k) or 0) > 0]
        assert throttle, "no rate-limit counter on the new master"

        # The spend budget: the first run of the budgeted program spends its limit on the new
        # master; the next is refused.
        execute = f"{base}/api/v1/programs/{budgeted.id}/execute/"
        first = session.post(execute, json={"input": {"question": "spend"}, "wait": True}, timeout=30)
        assert first.status_code == 200, first.text
        spent = master.get(f"dspex:spend:program:{budgeted.id}:d:{time.strftime('%Y-%m-%d', time.gmtime())}")
        assert spent is not None and float(spent) > 0.0001, spent
        second = session.post(execute, json={"input": {"question": "over"}, "wait": True}, timeout=30)
        assert (second.status_code, second.json()["code"]) == (402, "budget_exceeded"), second.text

        # The breaker: a failing provider opens it (state on the new master), and runs are refused.
        sim_sync.configure(error_rate=1.0, error_status=500)
        execute = f"{base}/api/v1/programs/{breaker_program.id}/execute/"
        codes = []
        for i in range(8):
            response = session.post(
                execute, json={"input": {"question": f"fails {i}"}, "wait": True}, timeout=30
            )
            body = response.json()
            codes.append((body.get("error") or {}).get("type") or body.get("code"))
            if "circuit_open" in codes:
                break
        assert "circuit_open" in codes, codes
        breakers = [
            k for k in master.scan_iter(match="dspex:res:*:breaker") if master.hget(k, "state") == b"open"
        ]
        assert breakers, "the breaker's state is not on the new master"
    except BaseException:
        worker_log.seek(0)
        said = [line for line in worker_log.readlines() if line.startswith("[")]  # log lines, no tracebacks
        print("\nthe drill's worker said (its log lines, last 40):\n" + "".join(said[-40:]))
        raise
    finally:
        load.stopping.set()
        stop(worker)
        stop(web)
        worker_log.close()
        sim_sync.reset()
        sim_queued.stop()
