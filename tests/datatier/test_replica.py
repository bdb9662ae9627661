"""The read replica (`DATABASE_REPLICA_URL`) against a real streaming replica.

The test starts a private primary, copies the test database into it, makes a streaming replica
of it with `pg_basebackup`, and serves the API from gunicorn with both URLs. With replay paused
on the replica, a just-made execution is found by its detail page (primary) and missing from
the list (replica); once the replica lags beyond `DSPEX_REPLICA_MAX_LAG_S` the list falls back
to the primary and readiness and /metrics say so; the same when the replica is stopped.
"""

import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest
import requests

from bench.dbservers import PrivatePostgres
from tests.factories import TokenFactory
from tests.support import database_url_of_tests, process_env, sim_env, start_web, stop, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DBNAME = "dspex_replica"
MAX_LAG_S = 4.0


@pytest.fixture
def primary_and_replica() -> Iterator[tuple[PrivatePostgres, PrivatePostgres]]:
    primary = PrivatePostgres()
    replica = None
    try:
        replica = PrivatePostgres(primary=primary)
        yield primary, replica
    finally:
        if replica is not None:
            replica.close()
        primary.close()


def copy_test_database(primary: PrivatePostgres) -> None:
    primary.create_database(DBNAME)
    dump = subprocess.run(
        ["pg_dump", "--no-owner", "--no-acl", database_url_of_tests()], check=True, capture_output=True
    )
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", primary.url(DBNAME)],
        input=dump.stdout,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def on(server: PrivatePostgres, sql: str) -> tuple:
    with psycopg.connect(server.url(DBNAME), autocommit=True) as conn:
        return conn.execute(sql).fetchone() or ()


def caught_up(replica: PrivatePostgres) -> bool:
    try:
        row = on(replica, "SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()")
    except psycopg.OperationalError:  # the database is not there yet
        return False
    return bool(row and row[0])


def test_lag_tolerant_reads_go_to_the_replica_and_fall_back_to_the_primary(
    make_program, operator, transactional_db, simlm, primary_and_replica
):
    primary, replica = primary_and_replica
    program = make_program()
    token = TokenFactory(user=operator).key
    copy_test_database(primary)
    env = sim_env(
        simlm,
        DATABASE_URL=primary.url(DBNAME),
        DATABASE_REPLICA_URL=replica.url(DBNAME),
        DSPEX_REPLICA_MAX_LAG_S=str(MAX_LAG_S),
        DSPEX_REPLICA_CHECK_S="0.1",
    )
    wait_for(lambda: caught_up(replica), 30, "the replica to replay the copied database")
    web, base = start_web(process_env(**env))
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"

    def listed() -> set[str]:
        response = session.get(f"{base}/api/v1/executions/?limit=200", timeout=10)
        assert response.status_code == 200, response.text
        return {row["id"] for row in response.json()["results"]}

    def replica_check() -> dict:
        time.sleep(0.15)  # past the probe interval: the answer reflects the replica as it is now
        return requests.get(f"{base}/health/ready", timeout=10).json()["checks"]["replica"]

    try:
        wait_for(lambda: replica_check()["status"] == "ok", 10, "the replica to serve")
        # A fresh commit replayed, then replay paused: the replica is behind from here on.
        # The lag counts from the last commit the replica replayed: this one.
        committed_at = time.monotonic()
        on(primary, "SELECT txid_current()")
        wait_for(lambda: caught_up(replica), 10, "the replica to replay the last commit", interval=0.02)
        on(replica, "SELECT pg_wal_replay_pause()")
        body = {"input": {"question": "replicated?"}, "wait": True}
        made = session.post(f"{base}/api/v1/programs/{program.id}/execute/", json=body, timeout=30)
        assert made.status_code == 200, made.text
        execution_id = made.json()["id"]
        assert session.get(f"{base}/api/v1/executions/{execution_id}/", timeout=10).status_code == 200
        not_yet = listed()
        assert time.monotonic() - committed_at < MAX_LAG_S, "too slow to see the replica within its lag bound"
        assert execution_id not in not_yet, replica_check()  # the list came from the paused replica

        # Beyond the lag bound: reads go to the primary, readiness and /metrics say so.
        time.sleep(MAX_LAG_S + 0.5)
        assert execution_id in listed()
        check = replica_check()
        assert check["status"] == "error" and "lagging" in check["error"]
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert "dspex_db_replica_serving 0.0" in metrics
        lag = next(line for line in metrics.splitlines() if line.startswith("dspex_db_replica_lag_seconds "))
        assert float(lag.split()[1]) > MAX_LAG_S

        # Replay resumed: the replica serves again, and has the row.
        on(replica, "SELECT pg_wal_replay_resume()")
        wait_for(lambda: caught_up(replica), 10, "the replica to catch up")
        wait_for(lambda: replica_check()["status"] == "ok", 10, "the replica to serve again")
        assert execution_id in listed()

        # The replica stopped: every list still answers, from the primary.
        replica.stop()
        assert execution_id in listed()
        check = replica_check()
        assert check["status"] == "error" and "down" in check["error"]
        assert check["critical"] is False
    finally:
        stop(web)
