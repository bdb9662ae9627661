"""Helpers for the worker tests: polling with deadlines, and private Redis/beat/web processes.

Fault tests never touch the machine's Redis (6379) or Postgres (5432): they start their own
server on a free port and stop only that one.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from django.db import connection

from bench.common import free_port, wait_http

ROOT = Path(__file__).resolve().parent.parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def sim_env(simlm: Any, **extra: Any) -> dict:
    """Environment making a worker's default LM the simulated provider over real HTTP."""
    return {
        "DSPEX_LM": "openai/sim-default",
        "DSPEX_LM_API_BASE": simlm.base_url,
        "DSPEX_LM_API_KEY": "sk-test-not-a-real-key",
        "DSPEX_LM_TIMEOUT_S": "10",
        **{key: str(value) for key, value in extra.items()},
    }


def database_url_of_tests() -> str:
    return f"postgres://localhost:5432/{connection.settings_dict['NAME']}"


class RedisServer:
    """A private `redis-server` on a free port (never the machine's 6379)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dspex-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def process_env(**extra: str) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url_of_tests(),
        **extra,
    }


def start_beat(env: dict, workdir: Path) -> subprocess.Popen:
    """celery beat with the database scheduler, on the test database (its state file in `workdir`)."""
    schedule = workdir / "celerybeat-schedule"
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dspex_site",
            "beat",
            "-S",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "-s",
            str(schedule),
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_web(env: dict) -> tuple[subprocess.Popen, str]:
    """gunicorn serving the API on the test database; returns (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "dspex_site.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-k",
            "gthread",
            "-w",
            "1",
            "--threads",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health/live", timeout=60)
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker_process(
    env: dict, queues: str = "llm_calls,priority", concurrency: int = 4
) -> subprocess.Popen:
    """A Celery worker on whatever broker `env` names (the `start_worker` fixture pings through
    the test process's own broker, so it cannot start one on a private Redis)."""
    name = f"private-{free_port()}@%h"
    args = ["worker", "-Q", queues, "-P", "threads", "-c", str(concurrency), "-n", name]
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "dspex_site", *args, "--without-mingle", "--without-gossip"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class PostgresServer:
    """A private PostgreSQL cluster on a free port, run as the `postgres` user (initdb refuses
    root). Only this cluster is ever stopped or restarted; the machine's 5432 is never touched."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dspex-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._as_postgres(["initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data)])
        self.start()

    def _as_postgres(self, argv: list[str]) -> None:
        # initdb and postgres refuse to run as root: as root, run them as the `postgres` user.
        command = " ".join(f"'{arg}'" for arg in argv)
        wrapped = ["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else argv
        subprocess.run(
            wrapped,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        argv = ["pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", action]
        self._as_postgres([*argv, *extra])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def copy_database(self, source_url: str, dbname: str) -> None:
        """Create `dbname` here as a copy (schema and rows) of another database."""
        subprocess.run(
            ["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", dbname], check=True
        )
        dump = subprocess.run(
            ["pg_dump", "--no-owner", "--no-acl", source_url], check=True, capture_output=True
        )
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", self.url(dbname)],
            input=dump.stdout,
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def close(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
