"""Shared fixtures: actors, API clients, programs, and the simulated provider over real HTTP.

Tests run against the machine's real PostgreSQL (pytest-django creates `test_dspex`) and Redis
(database 15, flushed per test so tests never see each other's cache entries).
"""

import subprocess
import sys
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
