"""The execution flow through a real PgBouncer in transaction pooling mode.

gunicorn and a Celery worker reach the test database only through a PgBouncer of the test's
own (`DATABASE_URL` = PgBouncer, `DSPEX_DB_POOLER=pgbouncer`, `DATABASE_DIRECT_URL` = Postgres):
a synchronous execution, a queued one, a batch (its dispatch serialized by a transaction-level
advisory lock, its results streamed in pages) and an optimization run all succeed, and `migrate`
goes to the direct URL. PgBouncer 1.18 (Debian 12) has no prepared-statement support: a
statement prepared server-side would fail the flow ("prepared statement ... does not exist").
"""

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from django_celery_beat.models import PeriodicTask

from bench.dbservers import PgBouncer
from dspex_site.celery import TASKS
from executions.models import CognitiveExecution
from optimization.models import OptimizationRun
from tests.datatier.servers import backends_counter
from tests.factories import TokenFactory
from tests.support import (
    ROOT,
    WorkerProcess,
    database_url_of_tests,
    process_env,
    sim_env,
    start_web,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@dataclass
class Stack:
    base: str
    session: requests.Session
    worker: WorkerProcess
    env: dict


def bounced_env(pgbouncer: PgBouncer, simlm, **extra: str) -> dict:
    dbname = database_url_of_tests().rsplit("/", 1)[1]
    return sim_env(
        simlm,
        DATABASE_URL=f"{pgbouncer.url(dbname)}?application_name=dspex-bounced",
        DSPEX_DB_POOLER="pgbouncer",
        DATABASE_DIRECT_URL=database_url_of_tests(),
        DSPEX_OPTIMIZATION_THREADS="1",
        **extra,
    )


@pytest.fixture
def stack(pgbouncer, simlm, operator, transactional_db) -> Iterator[Stack]:
    simlm.reset()
    # The web tier also pools in-process (both layers at once); the worker does not.
    web, base = start_web(process_env(**bounced_env(pgbouncer, simlm, DSPEX_DB_POOL_MAX="4")))
    env = bounced_env(pgbouncer, simlm)
    worker = start_worker(queues="default,llm_calls,priority,optimization", concurrency=4, env=env)
    session = requests.Session()
    session.headers["Authorization"] = f"Token {TokenFactory(user=operator).key}"
    try:
        yield Stack(base, session, worker, process_env(**env))
    finally:
        worker.stop()
        stop(web)


def server_transactions(pgbouncer: PgBouncer) -> int:
    dbname = database_url_of_tests().rsplit("/", 1)[1]
    return sum(int(row["total_xact_count"]) for row in pgbouncer.show("STATS") if row["database"] == dbname)


def test_the_whole_flow_runs_through_pgbouncer_in_transaction_mode(
    stack, pgbouncer, classifier, tickets, make_program
):
    program = make_program()
    before = server_transactions(pgbouncer)
    api = f"{stack.base}/api/v1"

    sync = stack.session.post(
        f"{api}/programs/{program.id}/execute/",
        json={"input": {"question": "sync?"}, "wait": True},
        timeout=60,
    )
    assert sync.status_code == 200, sync.text
    assert sync.json()["status"] == "succeeded"

    queued = stack.session.post(
        f"{api}/programs/{program.id}/execute/", json={"input": {"question": "queued?"}}, timeout=30
    )
    assert queued.status_code == 202, queued.text
    queued_id = queued.json()["id"]

    questions = [f"batch item {i}?" for i in range(6)]
    batch = stack.session.post(
        f"{api}/batches/",
        json={"program": str(program.id), "inputs": [{"question": q} for q in questions], "concurrency": 2},
        timeout=30,
    )
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["id"]

    run = stack.session.post(
        f"{api}/programs/{classifier.id}/optimize/",
        json={
            "optimizer": "BootstrapFewShot",
            "dataset": str(tickets.id),
            "metric": "exact_match",
            "config": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
            "split": {"seed": 0, "dev_fraction": 0.5, "max_train": 6, "max_dev": 6},
        },
        timeout=30,
    )
    assert run.status_code == 202, run.text
    run_id = run.json()["id"]

    wait_for(
        lambda: CognitiveExecution.objects.get(id=queued_id).status == "succeeded", 60, "the queued execution"
    )
    wait_for(
        lambda: stack.session.get(f"{api}/batches/{batch_id}/", timeout=10).json()["status"] == "finished",
        90,
        "the batch",
    )
    finished = wait_for(
        lambda: (r := OptimizationRun.objects.get(id=run_id)).is_finished and r, 120, "the optimization run"
    )
    assert finished.status == "succeeded", finished.error

    body = stack.session.get(f"{api}/batches/{batch_id}/", timeout=10).json()
    assert body["counts"]["succeeded"] == 6
    results = stack.session.get(f"{api}/batches/{batch_id}/results/", timeout=30)
    lines = [json.loads(line) for line in results.text.splitlines()]
    assert [line["input"]["question"] for line in lines] == questions
    assert all(line["status"] == "succeeded" for line in lines)

    # Every one of those statements went through PgBouncer, none needed a session of its own.
    assert server_transactions(pgbouncer) - before > 50
    assert "prepared statement" not in pgbouncer.log()
    pools = [row for row in pgbouncer.show("POOLS") if row["database"] != "pgbouncer"]
    assert {row["pool_mode"] for row in pools} == {"transaction"}


def test_migrate_goes_to_the_direct_url(pgbouncer, simlm, transactional_db):
    """`migrate` with DATABASE_URL at PgBouncer runs on DATABASE_DIRECT_URL (seen as its
    application_name in pg_stat_activity), and its post-migrate beat sync still runs."""
    PeriodicTask.objects.all().delete()
    env = process_env(**bounced_env(pgbouncer, simlm))
    env["DATABASE_DIRECT_URL"] += "?application_name=dspex-direct-migrate"
    most, stop_polling = backends_counter("dspex-direct-migrate")
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stop_polling()
    assert done.returncode == 0, done.stderr
    assert most() >= 1
    assert PeriodicTask.objects.filter(
        name__in=[w.schedule_name for w in TASKS.values() if w.schedule]
    ).count() == len([w for w in TASKS.values() if w.schedule])
