"""Shared fixtures: actors, API clients, programs, and the simulated provider over real HTTP.

Tests run against the machine's real PostgreSQL (pytest-django creates `test_dspex`) and Redis
(database 15, flushed per test so tests never see each other's cache entries).
"""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from django.core.cache import caches
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bench.common import free_port, wait_http
from programs.models import CognitiveProgram

ROOT = Path(__file__).resolve().parent.parent


class SimServer:
    """A `manage.py simlm` process; `configure()` changes its fault injection at runtime."""

    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def configure(self, **config: object) -> None:
        requests.post(f"http://127.0.0.1:{self.port}/_sim/config", json=config, timeout=5).raise_for_status()

    def reset(self) -> None:
        self.configure(
            latency_ms=0,
            error_rate=0,
            rate_limit_rpm=0,
            rate_limit_rate=0,
            timeout_rate=0,
            malformed_rate=0,
            spike_rate=0,
        )

    def stats(self) -> dict:
        return requests.get(f"http://127.0.0.1:{self.port}/_sim/stats", timeout=5).json()


def start_simlm(*args: str) -> SimServer:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"simlm did not start: {proc.stderr.read().decode()[-2000:]}") from None
    return SimServer(proc, port)


@pytest.fixture(scope="session")
def simlm() -> Iterator[SimServer]:
    server = start_simlm()
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture
def http_provider(simlm: SimServer, settings: pytest.FixtureRequest) -> Iterator[SimServer]:
    """Route `openai/...` models to the simulated provider over HTTP (DSPy's real lm15 path)."""
    from llm import gateway

    simlm.reset()
    settings.DSPEX_LM = "openai/sim-default"
    settings.DSPEX_LM_API_BASE = simlm.base_url
    settings.DSPEX_LM_API_KEY = "sk-test-not-a-real-key"
    settings.DSPEX_LM_TIMEOUT_S = 5.0
    gateway.reset()
    yield simlm
    simlm.reset()
    gateway.reset()


@pytest.fixture(autouse=True)
def _isolated_caches() -> Iterator[None]:
    from executions.runner import compiled_program

    for alias in ("default", "llm"):
        caches[alias].clear()
    compiled_program.cache_clear()
    yield


@pytest.fixture
def operator(django_user_model: type) -> object:
    return django_user_model.objects.create_superuser(username="op", password="op-password-123")


@pytest.fixture
def api(operator: object) -> APIClient:
    client = APIClient()
    token = Token.objects.create(user=operator)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def make_program(db: None):
    def make(name: str = "qa", pipeline: dict | None = None, variables: dict | None = None, **fields: object):
        return CognitiveProgram.objects.create(
            name=name,
            pipeline=pipeline or {"signature": "question -> answer"},
            variables=variables or {},
            status=fields.pop("status", "active"),
            **fields,
        )

    return make


class WorkerProcess:
    """A real `celery worker` subprocess on the test database and the tests' Redis."""

    def __init__(self, proc: subprocess.Popen, name: str):
        self.proc, self.name = proc, name

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would."""
        self.proc.kill()
        self.proc.wait()


def start_worker(
    queues: str = "default,llm_calls,priority",
    pool: str = "threads",
    concurrency: int = 4,
    env: dict | None = None,
    name: str | None = None,
) -> WorkerProcess:
    """Start a Celery worker bound to the test database. Tests using it need `transactional_db`
    (the worker only sees committed rows)."""
    from django.db import connection

    name = name or f"test-{free_port()}"
    worker_env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://localhost:5432/{connection.settings_dict['NAME']}",
        **(env or {}),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "dspex_site",
            "worker",
            "-Q",
            queues,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from dspex_site.celery import app

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        replies = app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5) or []
        if replies:
            return WorkerProcess(proc, name)
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited with {proc.returncode}")
    proc.kill()
    raise RuntimeError("celery worker did not answer a ping within 60 s")


@pytest.fixture
def worker(transactional_db: None) -> Iterator[WorkerProcess]:
    """A real Celery worker for the execution queues, stopped after the test."""
    proc = start_worker()
    yield proc
    proc.stop()
