"""Helpers for tests that start processes: simlm, Celery workers, beat, gunicorn, private Redis
and Postgres servers, and polling with deadlines.

Fault tests never touch the machine's Redis (6379) or Postgres (5432): they start their own
server on a free port and stop only that one.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import requests
from django.db import connection

from bench.common import free_port, wait_http
from bench.common import start_web as bench_start_web

ROOT = Path(__file__).resolve().parent.parent


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """`argv` run inside network namespace `netns` (`ip netns exec`, which execs it: the
    process keeps its pid), or as is when None (tests/multihost builds the namespaces)."""
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def spawn(argv: list[str], env: dict | None = None, output: Any = None) -> subprocess.Popen:
    """A background process in the project directory, its output discarded (or written to the
    open file `output`, for a test to show when it fails)."""
    target = output if output is not None else subprocess.DEVNULL
    stderr = subprocess.STDOUT if output is not None else subprocess.DEVNULL
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=target, stderr=stderr)


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
    """A private `redis-server` on a free port (never the machine's 6379), listening on `host`
    (inside network namespace `netns` when given)."""

    def __init__(self, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.host, self.netns = host, netns
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dspex-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--dir",
            self.dir,
        ]
        if self.host != "127.0.0.1":
            argv += ["--protected-mode", "no"]  # no password: other hosts of a test network connect
        self.proc = spawn(in_netns(self.netns, argv))
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        wait_for(lambda: _pings(client), 10, f"redis-server on port {self.port}")

    def pause(self) -> None:
        """SIGSTOP: the port accepts connections but nothing answers (a stalled Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
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


def settings_in_subprocess(expression: str, env: dict) -> dict:
    """`expression` (over `s`, the `dspex_site.settings` module) as a fresh process builds it
    from this environment, JSON-decoded; or `{"error": <its last line of stderr>}`."""
    script = f"import json, dspex_site.settings as s; print(json.dumps({expression}, default=str))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1]}
    return json.loads(done.stdout)


def start_beat(env: dict, workdir: Path) -> subprocess.Popen:
    """celery beat with the database scheduler, on the test database (its state file in `workdir`)."""
    schedule = workdir / "celerybeat-schedule"
    return spawn(
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
        env,
    )


def start_web(env: dict) -> tuple[subprocess.Popen, str]:
    """gunicorn serving the API on the test database; returns (process, base URL)."""
    proc, port = bench_start_web(env)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker_process(
    env: dict, queues: str = "llm_calls,priority", concurrency: int = 4, output: Any = None
) -> subprocess.Popen:
    """A Celery worker on whatever broker `env` names (the `start_worker` fixture pings through
    the test process's own broker, so it cannot start one on a private Redis); its log goes to
    the open file `output` when given."""
    name = f"private-{free_port()}@%h"
    args = ["worker", "-Q", queues, "-P", "threads", "-c", str(concurrency), "-n", name]
    if output is not None:
        args += ["-l", "INFO"]
    return spawn(
        [sys.executable, "-m", "celery", "-A", "dspex_site", *args, "--without-mingle", "--without-gossip"],
        env,
        output,
    )


class PostgresServer:
    """A private PostgreSQL cluster on a free port, run as the `postgres` user (initdb refuses
    root). Only this cluster is ever stopped or restarted; the machine's 5432 is never touched.

    It listens on `host` (inside network namespace `netns` when given) and, with `clients` (a
    CIDR such as 10.231.4.0/24), trusts connections from that network too; `options` are extra
    server settings (`max_connections`, ...)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        netns: str | None = None,
        clients: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.host, self.netns, self.options = host, netns, options or {}
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dspex-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._as_postgres(["initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data)])
        if clients:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {clients} trust\n")
        self.start()

    def _as_postgres(self, argv: list[str]) -> None:
        # initdb and postgres refuse to run as root: as root, run them as the `postgres` user.
        command = " ".join(f"'{arg}'" for arg in argv)
        wrapped = ["su", "postgres", "-s", "/bin/sh", "-c", command] if os.geteuid() == 0 else argv
        subprocess.run(
            in_netns(self.netns, wrapped),
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@{self.host}:{self.port}/{dbname}"

    def _ctl(self, action: str, *extra: str) -> None:
        settings = {"listen_addresses": self.host, **self.options}
        options = f"-p {self.port} -k {self.dir} " + " ".join(f"-c {k}={v}" for k, v in settings.items())
        argv = ["pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", action]
        self._as_postgres([*argv, *extra])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def copy_database(self, source_url: str, dbname: str) -> None:
        """Create `dbname` here as a copy (schema and rows) of another database."""
        subprocess.run(
            ["createdb", "-h", self.host, "-p", str(self.port), "-U", "postgres", dbname], check=True
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


class SimServer:
    """A `manage.py simlm` process; `configure()` changes its fault injection at runtime."""

    def __init__(
        self, proc: subprocess.Popen, port: int, api_key: str | None = None, host: str = "127.0.0.1"
    ):
        self.proc, self.port, self.api_key, self.host = proc, port, api_key, host
        self.base_url = f"http://{host}:{port}/v1"

    def requests(self, outcome: str | None = None) -> int:
        """Chat requests this instance received (all, or those with one outcome: `ok`,
        `unauthorized`, `error`, ...), since it started or was last `clear()`ed."""
        stats = self.stats()
        if outcome is None:
            return int(stats["endpoints"].get("chat", 0))
        return int(stats["outcomes"].get(outcome, 0))

    def clear(self) -> None:
        """Forget the request counts."""
        requests.post(f"http://{self.host}:{self.port}/_sim/reset", timeout=5).raise_for_status()

    def stop(self) -> None:
        """Stop the process: its port then refuses connections, as a dead provider's would."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def configure(self, **config: object) -> None:
        requests.post(
            f"http://{self.host}:{self.port}/_sim/config", json=config, timeout=5
        ).raise_for_status()

    def reset(self) -> None:
        self.configure(
            latency_ms=0,
            error_rate=0,
            rate_limit_rpm=0,
            rate_limit_rate=0,
            timeout_rate=0,
            malformed_rate=0,
            spike_rate=0,
            token_delay_ms=0,
        )

    def stats(self) -> dict:
        return requests.get(f"http://{self.host}:{self.port}/_sim/stats", timeout=5).json()


def start_simlm(
    *args: str, api_key: str | None = None, host: str = "127.0.0.1", netns: str | None = None
) -> SimServer:
    """`manage.py simlm` on a free port of `host` (inside network namespace `netns` when given);
    with `api_key` it answers 401 to any other key."""
    port = free_port()
    if api_key is not None:
        args = (*args, "--api-key", api_key)
    proc = subprocess.Popen(
        in_netns(netns, [sys.executable, "manage.py", "simlm", "--host", host, "--port", str(port), *args]),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://{host}:{port}/health")
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"simlm did not start: {proc.stderr.read().decode()[-2000:]}") from None
    return SimServer(proc, port, api_key, host)


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

    name = name or f"test-{free_port()}"
    worker_env = process_env(**(env or {}))
    proc = spawn(
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
        worker_env,
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
