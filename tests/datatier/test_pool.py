"""The in-process connection pool (`DSPEX_DB_POOL_MIN`/`MAX`/`TIMEOUT_S`) in web and worker
processes, the settings that build it, and pool usage in readiness and /metrics.

The processes run against the test database with an `application_name` of their own in the
URL, so the test counts exactly their Postgres backends while executions run.
"""

import functools
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from executions.models import CognitiveExecution
from monitoring.heartbeat import worker_pools
from tests.datatier.servers import backends_counter
from tests.factories import TokenFactory
from tests.support import (
    database_url_of_tests,
    process_env,
    settings_in_subprocess,
    sim_env,
    start_web,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.e2e]


def settings_of(**env: str) -> dict:
    """DATABASES as `dspex_site.settings` builds it from this environment (or its error)."""
    return settings_in_subprocess("s.DATABASES", {**process_env(DJANGO_DEBUG="1"), **env})


def test_the_pool_settings_build_django_s_psycopg_pool():
    databases = settings_of(
        DATABASE_URL="postgres://db.internal:5432/dspex?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        DSPEX_DB_POOL_MIN="2",
        DSPEX_DB_POOL_MAX="6",
        DSPEX_DB_POOL_TIMEOUT_S="5",
        DATABASE_CONN_MAX_AGE="60",
    )
    default = databases["default"]
    assert default["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 6, "timeout": 5.0}
    assert default["CONN_MAX_AGE"] == 0  # Django refuses persistent connections with a pool
    assert default["OPTIONS"]["sslmode"] == "verify-full"
    assert default["OPTIONS"]["sslrootcert"] == "/etc/ca.pem"
    assert default["DISABLE_SERVER_SIDE_CURSORS"] is False
    assert "direct" not in databases
    unpooled = settings_of(DATABASE_URL="postgres://db.internal:5432/dspex", DATABASE_CONN_MAX_AGE="60")
    assert "pool" not in unpooled["default"]["OPTIONS"] and unpooled["default"]["CONN_MAX_AGE"] == 60


def test_pgbouncer_mode_needs_no_session_on_the_pooled_url():
    databases = settings_of(
        DATABASE_URL="postgres://pgbouncer.internal:6432/dspex",
        DSPEX_DB_POOLER="pgbouncer",
        DATABASE_DIRECT_URL="postgres://db.internal:5432/dspex",
    )
    default, direct = databases["default"], databases["direct"]
    assert default["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert default["OPTIONS"]["prepare_threshold"] is None
    assert default["OPTIONS"]["server_side_binding"] is False
    assert (direct["HOST"], direct["PORT"]) == ("db.internal", 5432)
    assert direct["DISABLE_SERVER_SIDE_CURSORS"] is False and "pool" not in direct["OPTIONS"]
    assert direct["TEST"] == {"MIRROR": "default"}
    assert "replica" not in databases


def test_a_replica_url_adds_the_replica_alias():
    databases = settings_of(
        DATABASE_URL="postgres://db.internal:5432/dspex",
        DATABASE_REPLICA_URL="postgres://replica.internal:5432/dspex?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        DSPEX_DB_POOL_MAX="4",
    )
    replica = databases["replica"]
    assert (replica["HOST"], replica["OPTIONS"]["sslmode"]) == ("replica.internal", "verify-full")
    assert replica["OPTIONS"]["connect_timeout"] == 2  # a dead replica costs a list page little
    assert replica["OPTIONS"]["pool"]["max_size"] == 4 and replica["TEST"] == {"MIRROR": "default"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DSPEX_DB_POOLER": "pgpool"}, "DSPEX_DB_POOLER must be empty or 'pgbouncer', not 'pgpool'"),
        ({"DSPEX_DB_POOL_MIN": "8", "DSPEX_DB_POOL_MAX": "4"}, "DSPEX_DB_POOL_MIN (8) must be between 0"),
        ({"DSPEX_DB_POOL_MAX": "many"}, "DSPEX_DB_POOL_MAX must be an integer, not 'many'"),
    ],
)
def test_bad_pool_settings_stop_start_up_naming_the_variable(env, message):
    assert message in settings_of(**env)["error"]


@pytest.fixture
def pooled_env(simlm) -> Iterator[Callable[[str], dict]]:
    simlm.reset()
    simlm.configure(latency_ms=800)

    def env(application_name: str) -> dict:
        return sim_env(
            simlm,
            DATABASE_URL=f"{database_url_of_tests()}?application_name={application_name}",
            DSPEX_DB_POOL_MIN="1",
            DSPEX_DB_POOL_MAX="2",
        )

    yield env
    simlm.reset()


def test_a_worker_runs_more_executions_at_once_than_it_has_connections(
    make_program, operator, transactional_db, pooled_env
):
    """8 threads, a pool of 2: the connection goes back to the pool while a run waits on its
    LM call (800 ms), so the 8 runs overlap instead of queueing for the 2 connections."""
    program = make_program()
    name = "dspex-pool-worker"
    worker = start_worker(queues="llm_calls,priority", concurrency=8, env=pooled_env(name))
    most, stop_polling = backends_counter(name)
    try:
        started = time.monotonic()
        ids = []
        for i in range(8):
            execution = CognitiveExecution.objects.create(
                program=program, program_version=program.version, input={"question": f"pooled {i}?"}
            )
            execution.publish()
            ids.append(execution.id)

        def finished() -> bool:
            rows = list(
                CognitiveExecution.objects.filter(id__in=ids).values_list("status", "error", "attempts")
            )
            ended_badly = [
                (status, error, attempts)
                for status, error, attempts in rows
                if status in ("failed", "cancelled")
            ]
            assert not ended_badly, ended_badly  # say why at once rather than time out
            return all(status == "succeeded" for status, _, _ in rows)

        wait_for(finished, 60, "8 pooled executions to succeed", interval=0.05)
        elapsed = time.monotonic() - started
        pools = wait_for(
            lambda: next((p for host, p in worker_pools().items() if host.startswith(worker.name)), None),
            15,
            "the worker's heartbeat with its pool usage",
        )
    finally:
        stop_polling()
        worker.stop()
    assert 1 <= most() <= 2, most()
    assert elapsed < 8 * 0.8 * 0.6, f"the runs did not overlap: {elapsed:.1f} s"
    assert pools["default"]["pool_max"] == 2 and pools["default"]["pool_size"] <= 2


def test_the_web_tier_serves_synchronous_runs_from_its_pool_and_reports_it(
    make_program, operator, transactional_db, pooled_env
):
    program = make_program()
    token = TokenFactory(user=operator).key
    name = "dspex-pool-web"
    web, base = start_web(process_env(**pooled_env(name)))
    most, stop_polling = backends_counter(name)
    statuses: list[int] = []
    try:

        def execute(i: int) -> None:
            response = requests.post(
                f"{base}/api/v1/programs/{program.id}/execute/",
                json={"input": {"question": f"web pooled {i}?"}, "wait": True},
                headers={"Authorization": f"Token {token}"},
                timeout=60,
            )
            statuses.append(response.status_code)

        threads = [threading.Thread(target=execute, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ready = requests.get(f"{base}/health/ready", timeout=10).json()
        metrics = requests.get(f"{base}/metrics", timeout=10).text
    finally:
        stop_polling()
        stop(web)
    assert statuses == [200] * 4
    assert 1 <= most() <= 2, most()
    database = ready["checks"]["database"]
    assert database["pool"] == "in-process" and database["pooler"] == "none"
    usage = database["pool_usage"]["default"]
    assert usage["pool_max"] == 2 and 1 <= usage["pool_size"] <= 2
    assert usage["requests_waiting"] == 0
    gauges = [line for line in metrics.splitlines() if line.startswith("dspex_db_pool_max{")]
    web_gauges = [line for line in gauges if 'alias="default"' in line and 'process="web:' in line]
    assert [line.rsplit(" ", 1)[1] for line in web_gauges] == ["2.0"], gauges


def test_each_prefork_child_draws_from_a_pool_of_its_own(
    make_program, operator, transactional_db, pooled_env
):
    """The optimization workers fork: a child must never use a pool made before the fork."""
    program = make_program()
    name = "dspex-pool-prefork"
    worker = start_worker(queues="llm_calls,priority", pool="prefork", concurrency=2, env=pooled_env(name))
    most, stop_polling = backends_counter(name)
    try:
        ids = []
        for i in range(4):
            execution = CognitiveExecution.objects.create(
                program=program, program_version=program.version, input={"question": f"forked {i}?"}
            )
            execution.publish()
            ids.append(execution.id)

        def finished() -> bool:
            rows = list(
                CognitiveExecution.objects.filter(id__in=ids).values_list("status", "error", "attempts")
            )
            ended_badly = [
                (status, error, attempts)
                for status, error, attempts in rows
                if status in ("failed", "cancelled")
            ]
            assert not ended_badly, ended_badly  # say why at once rather than time out
            return all(status == "succeeded" for status, _, _ in rows)

        wait_for(finished, 60, "4 executions on a prefork worker", interval=0.05)
    finally:
        stop_polling()
        worker.stop()
    assert 1 <= most() <= 2 * 2, most()  # two children, a pool of at most 2 each


@pytest.mark.django_db(transaction=True)
def test_no_connection_is_held_while_the_provider_is_waited_on(make_program, http_provider, monkeypatch):
    """What a run reads after it gave its connection back (a program not yet cached, limits
    due for a refresh) must not keep a pooled connection through the provider call: with 8
    runs on a pool of 2, such a run starved the others into a pool timeout. Observed at the
    moment the request goes to the provider, in a run whose caches are all cold."""
    from django.db import connection

    from dspex_site import db
    from executions import runner
    from llm import budgets, gateway

    monkeypatch.setattr(db, "pooled", lambda alias="default": True)  # release() closes as with a pool
    held: list[bool] = []
    real_engine = gateway._provider_engine

    class Observed:
        def __init__(self, inner):
            self.inner = inner

        def complete(self, request):
            held.append(connection.connection is not None)
            return self.inner.complete(request)

    gateway._provider_engine.cache_clear()
    observed = functools.cache(lambda provider: Observed(real_engine(provider)))
    monkeypatch.setattr(gateway, "_provider_engine", observed)
    program = make_program()  # the default model: openai/sim-default, over HTTP (http_provider)
    for n in range(2):
        runner._runnable.clear()
        budgets.invalidate()
        execution = CognitiveExecution.objects.create(
            program=program, program_version=program.version, input={"question": f"cold {n}?"}
        )
        outcome = runner.run_execution(execution.id)
        assert outcome.execution.status == CognitiveExecution.Status.SUCCEEDED, outcome.execution.error
    assert held == [False, False]
