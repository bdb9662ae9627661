"""Fixtures for the caching tests: a private redis-server process, clean per-process state."""

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis

from bench.common import free_port


class RedisProcess:
    """A `redis-server` of the test's own, on its own port: stopping it touches nothing else."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

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
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def pause(self) -> None:
        """SIGSTOP: the port accepts connections but nothing answers (a stalled Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the fail-open tests")
    server = RedisProcess(free_port())
    server.start()
    yield server
    server.stop()


def redis_cache(url: str, timeout: float = 0.3) -> dict:
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": url,
        "KEY_PREFIX": "dspex",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": timeout, "SOCKET_TIMEOUT": timeout},
    }


@pytest.fixture(autouse=True)
def _fresh_caching_state() -> Iterator[None]:
    from caching import embeddings, store
    from programs import retrieval

    store.reset_breakers()
    store._local_errors.clear()
    embeddings.reset()
    retrieval._matrices.clear()
    yield
    store.reset_breakers()
    store._local_errors.clear()
