"""`make run` (dspex_site.launch): the whole service comes up with the demo loaded, and stops cleanly.

The launcher runs on a database and a Redis of the test's own (never the machine's 6379 and
never the `dspex` database a developer's `make run` uses), with its var/ and static files in a
temporary directory.
"""

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import psycopg
import pytest
import requests

from bench.common import free_port
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e

GROUPS = {"llm", "priority", "background", "optimization"}


def drop_database(name: str) -> None:
    with psycopg.connect("postgres://localhost:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def ready(base: str) -> dict | None:
    try:
        body = requests.get(f"{base}/health/ready", timeout=5).json()
    except (requests.RequestException, ValueError):
        return None
    checks = body.get("checks", {})
    workers = checks.get("workers", {}).get("groups", {})
    if body.get("status") == "ok" and set(workers) == GROUPS and checks.get("beat", {}).get("status") == "ok":
        return body
    return None


def test_make_run_serves_the_demo_with_workers_and_beat_then_stops_every_process(private_redis, tmp_path):
    slot = os.environ.get("DSPEX_TEST_SLOT", "0")
    dbname = f"test_dspex_launch_{slot}"
    drop_database(dbname)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_", "REDIS_", "CELERY_", "DSPEX_"))
    }
    env.update(
        DATABASE_URL=f"postgres://localhost:5432/{dbname}",
        REDIS_URL=private_redis.url,
        DSPEX_PORT=str(port),
        DSPEX_VAR_DIR=str(tmp_path / "var"),
        DSPEX_STATIC_ROOT=str(tmp_path / "static"),
        DSPEX_TEST_SLOT=slot,
    )
    log_path = tmp_path / "launch.log"
    log = log_path.open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "dspex_site.launch"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # as a terminal runs it: Ctrl-C goes to this group
    )
    base = f"http://127.0.0.1:{port}"
    children: list[psutil.Process] = []
    try:
        try:
            wait_for(lambda: ready(base) or launcher.poll() is not None, 180, "the service to be ready")
        except AssertionError:
            raise AssertionError(log_path.read_text()[-4000:]) from None
        assert launcher.poll() is None, log_path.read_text()[-4000:]
        children = psutil.Process(launcher.pid).children(recursive=True)
        assert len(children) >= 6  # gunicorn (+ its workers), four Celery workers, beat

        # The operator's token is printed once; the demo programs are there and run on a worker.
        token = re.search(r"API key\s*: (\S+)", log_path.read_text()).group(1)
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        programs = session.get(f"{base}/api/v1/programs/", timeout=10).json()["results"]
        demo = next(p for p in programs if p["name"] == "demo-qa")
        queued = session.post(
            f"{base}/api/v1/programs/{demo['id']}/execute/",
            json={"input": {"question": "What is DSPex?"}},
            timeout=10,
        )
        assert queued.status_code == 202, queued.text
        url = f"{base}/api/v1/executions/{queued.json()['id']}/"
        execution = wait_for(
            lambda: (
                (body := session.get(url, timeout=10).json())["status"] in {"succeeded", "failed"} and body
            ),
            60,
            "the demo execution to finish on a worker",
        )
        assert execution["status"] == "succeeded", execution
        assert execution["output"]["answer"]

        # Ctrl-C: the signal reaches the launcher's group; it stops each process once.
        started = time.monotonic()
        os.killpg(launcher.pid, signal.SIGINT)
        launcher.wait(timeout=60)
        took = time.monotonic() - started
        text = log_path.read_text()
        for name in (
            "web",
            "worker_llm",
            "worker_priority",
            "worker_background",
            "worker_optimization",
            "beat",
        ):
            # Status 0: a warm shutdown, not a process killed by a second signal mid-shutdown.
            assert re.search(rf"{name} \| exited with status 0\n", text), f"{name}:\n{text[-3000:]}"
        assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        # Under the launcher's 30 s kill fallback: every process stopped on its own.
        assert took < 30, f"stopping took {took:.0f} s\n{text[-3000:]}"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for child in children:
            if child.is_running():
                child.kill()
        log.close()
        drop_database(dbname)
