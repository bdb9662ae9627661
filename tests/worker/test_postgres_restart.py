"""Postgres restarts while executions are submitted and running: the workers reconnect and
carry on; no accepted execution is lost or left pending/running.

The test runs its own PostgreSQL cluster (a copy of the test database) on a free port, and
restarts only that one.
"""

import threading
import time

import psycopg
import pytest
import requests

from tests.factories import TokenFactory
from tests.support import (
    PostgresServer,
    database_url_of_tests,
    process_env,
    sim_env,
    start_web,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_workers_carry_on_after_postgres_restarts_under_load(make_program, operator, transactional_db, simlm):
    token = TokenFactory(user=operator).key
    program = make_program()
    server = PostgresServer()
    server.copy_database(database_url_of_tests(), "dspex_restart")
    url = server.url("dspex_restart")
    simlm.reset()
    simlm.configure(latency_ms=300)
    env = sim_env(simlm, DATABASE_URL=url, DSPEX_HEARTBEAT_S="1")
    web, base = start_web(process_env(**env))
    worker = start_worker(queues="llm_calls,priority", concurrency=8, env=env)
    accepted: list[str] = []
    stop_load = threading.Event()

    def load() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        i = 0
        while not stop_load.is_set():
            i += 1
            try:
                response = session.post(
                    f"{base}/api/v1/programs/{program.id}/execute/",
                    json={"input": {"question": f"restart load {i}?"}},
                    timeout=30,
                )
            except requests.RequestException:
                continue
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            time.sleep(0.05)

    def statuses() -> dict[str, int]:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM cognitive_executions WHERE id = ANY(%s) GROUP BY status",
                [accepted[:]],
            ).fetchall()
        return dict(rows)

    def unfinished() -> list:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(
                "SELECT status, attempts, errors, worker FROM cognitive_executions "
                "WHERE id = ANY(%s) AND status <> 'succeeded'",
                [accepted[:]],
            ).fetchall()

    loader = threading.Thread(target=load, daemon=True)
    try:
        loader.start()
        wait_for(lambda: statuses().get("succeeded", 0) >= 5, 60, "executions to succeed before the restart")
        server.restart()
        before_restart = len(accepted)
        wait_for(lambda: len(accepted) >= before_restart + 10, 60, "the API to accept work after the restart")
        stop_load.set()
        loader.join(timeout=40)
        total = len(accepted)
        try:
            wait_for(lambda: statuses().get("succeeded", 0) == total, 90, f"all {total} accepted to succeed")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {statuses()} {unfinished()}") from None
    finally:
        stop_load.set()
        worker.stop()
        stop(web)
        server.close()
        simlm.reset()
