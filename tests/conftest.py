"""Shared fixtures: actors, API clients, programs, and the simulated provider over real HTTP.

Rows are built with the factories of tests/factories.py; the permission actors are in
tests/actors.py.

Tests run against the machine's real PostgreSQL (pytest-django creates `test_dspex`) and Redis
(database 15, flushed per test so tests never see each other's cache entries).
"""

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest
from django.core.cache import caches
from rest_framework.test import APIClient

from tests.actors import ACTOR_NAMES, Actors
from tests.factories import ProgramFactory, SuperuserFactory, TokenFactory
from tests.support import RedisServer, SimServer, WorkerProcess, start_simlm, start_worker


def pytest_configure(config: pytest.Config) -> None:
    """With DSPEX_TEST_BROKER=amqp (tests/settings.py), a fresh RabbitMQ virtual host of this
    slot's own: the machine's RabbitMQ is shared, so nothing else is touched."""
    if os.environ.get("DSPEX_TEST_BROKER") == "amqp":
        vhost = amqp_vhost()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, check=False)
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, check=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            capture_output=True,
            check=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    if os.environ.get("DSPEX_TEST_BROKER") == "amqp":
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", amqp_vhost()], capture_output=True, check=False)


def amqp_vhost() -> str:
    from django.conf import settings

    return str(settings.CELERY_BROKER_URL).rsplit("/", 1)[1]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`actor_name`: every actor of tests/actors.py; `endpoint_action`: every `Action` of the
    test's class (tests/api/cases.py)."""
    if "actor_name" in metafunc.fixturenames:
        metafunc.parametrize("actor_name", ACTOR_NAMES)
    if "endpoint_action" in metafunc.fixturenames:
        actions = metafunc.cls.actions
        metafunc.parametrize("endpoint_action", actions, ids=[action.name for action in actions])


@pytest.fixture(scope="session")
def simlm() -> Iterator[SimServer]:
    server = start_simlm()
    yield server
    server.proc.terminate()
    server.proc.wait(timeout=10)


@pytest.fixture
def simlm_factory() -> Iterator[Callable[..., SimServer]]:
    """`make(api_key="k-a")`: one more `manage.py simlm` instance on its own free port, requiring
    its own key when given (401 otherwise), each counting the requests it received
    (`server.requests()`); all stopped after the test."""
    started: list[SimServer] = []

    def make(*args: str, api_key: str | None = None) -> SimServer:
        server = start_simlm(*args, api_key=api_key)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


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
    from dspex_site import local_cache
    from executions.runner import compiled_program

    for alias in ("default", "llm"):
        caches[alias].clear()
    compiled_program.cache_clear()
    local_cache.clear_all()
    yield


@pytest.fixture
def operator(db: None) -> object:
    """A superuser (its name predates the Operators group; `actors["operator"]` is a member)."""
    return SuperuserFactory(username="op", password="op-password-123")


@pytest.fixture
def api(operator: object) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {TokenFactory(user=operator).key}")
    return client


@pytest.fixture
def actors(db: None) -> Actors:
    """The permission actors by name (anonymous, outsider, viewer, operator, superuser), each with
    a token of its own, created on first use."""
    return Actors()


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def make_program(db: None):
    """`make_program("qa", pipeline=...)`: ProgramFactory with the name first (most tests name
    their program; the default is "qa")."""

    def make(name: str = "qa", pipeline: dict | None = None, variables: dict | None = None, **fields: object):
        return ProgramFactory(
            name=name,
            **({"pipeline": pipeline} if pipeline else {}),
            **({"variables": variables} if variables else {}),
            **fields,
        )

    return make


@pytest.fixture
def worker(transactional_db: None) -> Iterator[WorkerProcess]:
    """A real Celery worker for the execution queues, stopped after the test."""
    proc = start_worker()
    yield proc
    proc.stop()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own on a free port: stopping or pausing it touches nothing else."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the Redis fault tests")
    server = RedisServer()
    yield server
    server.close()
