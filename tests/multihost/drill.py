"""The multi-host deployment of the drill (tests/multihost/test_drill.py): a data host, two
application hosts and HAProxy, each part a real process of the product's own configuration.

- data host: its own PostgreSQL (a copy of the test database) and Redis (cache and broker),
  listening on the host's address; the simulated provider (`simlm`, over HTTP); Celery beat
  (one per deployment: it is where the reaper's schedule comes from);
- each application host: gunicorn with dspex_site/gunicorn_conf.py and the Celery worker
  groups exactly as `make run` starts them (dspex_site.launch.worker_commands: llm, priority,
  background, optimization);
- HAProxy in the root namespace with docker/haproxy/haproxy.cfg, its admin socket for
  `show servers state`.
"""

import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import requests
from celery import Celery

from bench.common import free_port
from dspex_site.launch import worker_commands
from tests.multihost.network import Host, Network
from tests.support import ROOT, PostgresServer, RedisServer, SimServer, start_simlm, wait_for

WEB_PORT = 8000
# A request line of HAProxy's `option httplog`: ... frontend backend/server Tq/Tw/Tc/Tr/Ta status
# bytes captured-cookies termination-state ... "request line"
HTTPLOG = re.compile(
    r"\] \S+ \S+ -?\d+/-?\d+/-?\d+/-?\d+/\+?(?P<total>-?\d+) (?P<status>-?\d+) \d+ \S+ \S+ "
    r'(?P<state>\S{4}) .*"(?P<request>[^"]*)"$'
)
DB_NAME = "dspex"

# What bounds failover (docs/operations.md, "Multi-host deployment"), set small for the drill.
FAILOVER = {
    "DSPEX_HEARTBEAT_S": "1",
    "DSPEX_HEARTBEAT_STALE_S": "6",
    "DSPEX_REAP_INTERVAL_S": "2",
    "DSPEX_PENDING_STALE_S": "10",
}
# Worker groups per application host, smaller than the defaults: the drill's load is light and
# the machine (2 shared cores) runs both hosts.
CONCURRENCY = {
    "LLM_CONCURRENCY": "12",
    "PRIORITY_CONCURRENCY": "2",
    "BACKGROUND_CONCURRENCY": "4",
    "OPTIMIZATION_CONCURRENCY": "1",
    "WEB_CONCURRENCY": "2",
    "WEB_THREADS": "4",
}


def stop_leftover_haproxy(socket_prefix: str) -> None:
    """HAProxy runs in the root namespace, so removing the namespaces does not stop the one a
    crashed earlier run of this slot left: find it by its admin socket's directory."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "haproxy":
            continue
        try:
            if proc.environ().get("HAPROXY_STATS_SOCKET", "").startswith(socket_prefix):
                proc.kill()
        except psutil.Error:
            pass


class Deployment:
    def __init__(self, slot: int, source_db_url: str) -> None:
        prefix = f"dspex-multihost-{slot}-"
        stop_leftover_haproxy(str(Path(tempfile.gettempdir()) / prefix))
        for leftover in Path(tempfile.gettempdir()).glob(prefix + "*"):  # a crashed earlier run's
            shutil.rmtree(leftover, ignore_errors=True)
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.network = Network(slot, self.logs)
        self.source_db_url = source_db_url
        self.pg: PostgresServer | None = None
        self.redis: RedisServer | None = None
        self.simlm: SimServer | None = None
        self.haproxy: subprocess.Popen | None = None
        self.lb_port = free_port()
        self.stats_socket = str(self.dir / "haproxy.sock")

    # --- bring-up ---------------------------------------------------------------------------------
    def start(self) -> None:
        net = self.network
        net.create()
        self.data = net.add_host("data", 10)
        self.apps = {"app1": net.add_host("app1", 11), "app2": net.add_host("app2", 12)}
        self.pg = PostgresServer(
            host=self.data.address,
            netns=self.data.netns,
            clients=net.cidr,
            options={"max_connections": "300"},
        )
        self.pg.copy_database(self.source_db_url, DB_NAME)
        self.redis = RedisServer(host=self.data.address, netns=self.data.netns)
        self.simlm = start_simlm("--latency-ms", "1500", host=self.data.address, netns=self.data.netns)
        self.env = self.process_env()
        self.data.start("beat", self.beat_command(), self.env)
        for host in self.apps.values():
            self.start_app(host)
        self.start_haproxy()
        for host in self.apps.values():
            self.wait_app(host)
        wait_for(lambda: self.lb_states() == {"web1": "up", "web2": "up"}, 30, "HAProxy to see both webs up")

    def process_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "DATABASE_", "DSPEX_TEST_BROKER"))
        }
        assert self.simlm is not None and self.redis is not None and self.pg is not None
        hosts = ",".join(["127.0.0.1", "localhost", *(h.address for h in self.apps.values())])
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.settings",
                "DJANGO_DEBUG": "0",
                "DJANGO_ALLOWED_HOSTS": hosts,
                "DATABASE_URL": self.pg.url(DB_NAME),
                "REDIS_URL": self.redis.url,
                "CELERY_BROKER_URL": self.redis.url,
                "DSPEX_API_THROTTLE_RATE": "",
                "DSPEX_LM": "openai/sim-default",
                "DSPEX_LM_API_BASE": self.simlm.base_url,
                "DSPEX_LM_API_KEY": "sk-test-not-a-real-key",
                "DSPEX_LM_TIMEOUT_S": "10",
                "LOG_LEVEL": "WARNING",
                "PORT": str(WEB_PORT),
                **FAILOVER,
                **CONCURRENCY,
            }
        )
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return env

    def beat_command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "celery", "-A", "dspex_site", "beat", "-l", "WARNING"),
            *("--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"),
            *("-s", str(self.dir / "celerybeat-schedule")),
        ]

    def start_app(self, host: Host) -> None:
        env = {**self.env, "DSPEX_HOST": host.address}
        host.start("web", [sys.executable, "-m", "gunicorn", "-c", "dspex_site/gunicorn_conf.py"], env)
        for name, command in worker_commands(env).items():
            if name.startswith("worker_"):
                host.start(name, command, env)

    def wait_app(self, host: Host, timeout: float = 90) -> None:
        """Its web answers /health/ready and every one of its worker groups answers a ping."""

        def ready() -> bool:
            try:
                return requests.get(f"http://{host.address}:{WEB_PORT}/health/ready", timeout=2).ok
            except requests.RequestException:
                return False

        try:
            wait_for(ready, timeout, f"the web of {host.name}", interval=0.5)
            names = [f"{group}@{host.name}" for group in ("llm", "priority", "background", "optimization")]
            wait_for(lambda: self.pinged(names), timeout, f"the workers of {host.name}", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{host.log_tail()}") from None

    def pinged(self, names: list[str]) -> bool:
        probe = Celery("drill-probe", broker=self.env["CELERY_BROKER_URL"], set_as_current=False)
        try:
            replies = probe.control.ping(destination=names, timeout=1.0) or []
        finally:
            probe.close()
        answered = {name for reply in replies for name in reply}
        return answered >= set(names)

    def start_haproxy(self) -> None:
        env = {
            **os.environ,
            "DSPEX_LB_BIND": f"127.0.0.1:{self.lb_port}",
            "DSPEX_WEB1": f"{self.apps['app1'].address}:{WEB_PORT}",
            "DSPEX_WEB2": f"{self.apps['app2'].address}:{WEB_PORT}",
            "HAPROXY_STATS_SOCKET": self.stats_socket,
        }
        log = (self.logs / "haproxy.log").open("ab")
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(ROOT / "docker" / "haproxy" / "haproxy.cfg")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: os.path.exists(self.stats_socket), 10, "HAProxy's admin socket")

    # --- observing ---------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(self.stats_socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def lb_states(self) -> dict[str, str]:
        """{server: up/down} from `show servers state` (srv_op_state 2 = running)."""
        states = {}
        for line in self.haproxy_command("show servers state dspex_web").splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "dspex_web":
                states[fields[3]] = "up" if fields[5] == "2" else "down"
        return states

    def haproxy_log(self, lines: int = 60) -> str:
        """HAProxy's log lines of requests that did not end normally (termination state other
        than `----`), and its last lines."""
        path = self.logs / "haproxy.log"
        if not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        # A request line's termination state is "----" when it ended normally.
        odd = [line for line in text if '"' in line and " ---- " not in line]
        return "--- haproxy.log\n" + "\n".join([*odd[-lines:], "(last lines)", *text[-10:]])

    def haproxy_requests(self) -> list[dict]:
        """HAProxy's request log (`option httplog`): per request its status, termination state
        (`----` when it ended normally, `SH--` when the server closed before any response),
        total time (ms) and request line."""
        path = self.logs / "haproxy.log"
        text = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [
            {
                "status": int(m["status"]),
                "state": m["state"],
                "total_ms": int(m["total"]),
                "request": m["request"],
            }
            for m in map(HTTPLOG.search, text)
            if m
        ]

    def sql(self, query: str, params: Any = None) -> list[tuple]:
        assert self.pg is not None
        with psycopg.connect(self.pg.url(DB_NAME), autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def unacked_messages(self) -> list[tuple[str, list]]:
        """(task, args) of every message delivered but never acknowledged (kombu's Redis
        transport keeps them in the `unacked` hash until the visibility timeout)."""
        assert self.redis is not None
        client = redis.Redis.from_url(self.redis.url)
        messages = []
        for raw in client.hvals("unacked"):
            message = json.loads(raw)[0]
            args = json.loads(base64.b64decode(message["body"]))[0]
            messages.append((message["headers"]["task"], args))
        client.close()
        return messages

    # --- tear-down ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Everything this deployment started, stopped; its namespaces and links removed."""
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.kill()
            self.haproxy.wait()
        for name, host in self.network.hosts.items():
            if name != "data":
                host.kill_all()
        data = self.network.hosts.get("data")
        for proc in data.procs.values() if data else []:
            proc.kill()
            proc.wait()
        if self.simlm is not None:
            self.simlm.stop()
        if self.redis is not None:
            self.redis.close()
        if self.pg is not None:
            with contextlib.suppress(subprocess.CalledProcessError):
                self.pg.close()  # pg_ctl stop: a killed postmaster would leave its shared memory
        self.network.clean()  # kills whatever is left in the namespaces first
        if os.environ.get("DSPEX_DRILL_LOGS"):  # keep every process's output for a look later
            shutil.copytree(self.logs, os.environ["DSPEX_DRILL_LOGS"], dirs_exist_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
