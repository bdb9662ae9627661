"""Servers the data-tier tests start on ports of their own: PgBouncer (bench.dbservers) in
transaction mode in front of the machine's Postgres, and a private Postgres serving TLS with a
certificate from a CA the test makes (openssl CLI), and a Redis master, replica and three
sentinels (`SentinelGroup`). Each is stopped, and its files removed, by
the test that made it; the machine's Postgres is only ever a client's upstream."""

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

from bench.common import free_port
from bench.dbservers import own_by_postgres
from tests.support import PostgresServer, database_url_of_tests, spawn, wait_for


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class CertificateAuthority:
    """A throw-away CA (openssl CLI) that signs server certificates for given DNS names."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir, self.name = directory, name
        self.cert = directory / f"{name}.crt"
        self.key = directory / f"{name}.key"
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", str(self.key), "-out", str(self.cert),
            cwd=directory,
        )  # fmt: skip

    def issue(self, stem: str, dns_name: str) -> tuple[Path, Path]:
        """(certificate, key) for a server known as `dns_name` (its CN and only SAN)."""
        key, csr, cert = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.dir / f"{stem}.ext"
        ext.write_text(f"subjectAltName=DNS:{dns_name}\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={dns_name}",
                 "-keyout", str(key), "-out", str(csr), cwd=self.dir)  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                 "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
                 cwd=self.dir)  # fmt: skip
        return cert, key


class TLSPostgres(PostgresServer):
    """A private Postgres with `ssl = on`, its certificate for `localhost` signed by `self.ca`;
    `self.other_ca` is a CA that signed nothing of it."""

    def __init__(self) -> None:
        self.certs = Path(tempfile.mkdtemp(prefix="dspex-tls-"))
        self.ca = CertificateAuthority(self.certs, "dspex-test-ca")
        self.other_ca = CertificateAuthority(self.certs, "another-ca")
        self._configured = False
        super().__init__()

    def start(self) -> None:
        if not self._configured:
            cert, key = self.ca.issue("server", "localhost")
            for source, target in ((cert, "server.crt"), (key, "server.key")):
                shutil.copy(source, self.data / target)
                os.chmod(self.data / target, 0o600)
                own_by_postgres(self.data / target)
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
            self._configured = True
        super().start()

    def tls_url(self, host: str, ca: Path, dbname: str = "postgres") -> str:
        return f"postgres://postgres@{host}:{self.port}/{dbname}?sslmode=verify-full&sslrootcert={ca}"

    def close(self) -> None:
        try:
            super().close()
        finally:
            shutil.rmtree(self.certs, ignore_errors=True)


def backends_counter(application_name: str) -> tuple[Callable[[], int], Callable[[], None]]:
    """Poll the Postgres backends of one application every 20 ms; (most seen, stop)."""
    seen = [0]
    done = threading.Event()

    def poll() -> None:
        with psycopg.connect(database_url_of_tests(), autocommit=True) as conn:
            while not done.is_set():
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [application_name]
                ).fetchone() or (0,)
                seen[0] = max(seen[0], int(count))
                time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def stop_polling() -> None:
        done.set()
        thread.join(timeout=5)

    return lambda: seen[0], stop_polling


class SentinelGroup:
    """A private Redis master, one replica and three `redis-sentinel`s watching them (quorum 2),
    each on a free port, with passwords on the servers and on the sentinels. Failover is quick
    (down after `down_after_ms`); only these processes are ever killed."""

    MASTER_NAME = "dspex-drill"
    PASSWORD = "drill-redis-password"
    SENTINEL_PASSWORD = "drill-sentinel-password"

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 3000) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dspex-sentinel-"))
        self.procs: dict[int, subprocess.Popen] = {}
        self.servers = [free_port(), free_port()]
        self.sentinel_ports = [free_port() for _ in range(3)]
        try:
            master, replica = self.servers
            self._redis(master)
            self._redis(replica, "--replicaof", "127.0.0.1", str(master))
            synced = lambda: self.role(replica) == "slave" and self._linked(replica)  # noqa: E731
            wait_for(synced, 20, "the replica to sync")
            for port in self.sentinel_ports:
                conf = self.dir / f"sentinel-{port}.conf"
                conf.write_text(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {master} 2\n"
                    f"sentinel down-after-milliseconds {self.MASTER_NAME} {down_after_ms}\n"
                    f"sentinel failover-timeout {self.MASTER_NAME} {failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {self.MASTER_NAME} 1\n"
                    f"sentinel auth-pass {self.MASTER_NAME} {self.PASSWORD}\n"
                    f"requirepass {self.SENTINEL_PASSWORD}\n"
                    f"sentinel sentinel-pass {self.SENTINEL_PASSWORD}\n"
                )
                self.procs[port] = spawn(["redis-sentinel", str(conf)])
            wait_for(self._sentinels_agree, 30, "three sentinels that know each other and the replica")
        except BaseException:
            self.close()
            raise

    def _redis(self, port: int, *extra: str) -> None:
        self.procs[port] = spawn(
            [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", f"dump-{port}.rdb",
                "--requirepass", self.PASSWORD, "--masterauth", self.PASSWORD, *extra,
            ]
        )  # fmt: skip
        wait_for(lambda: self.role(port) is not None, 10, f"redis-server on port {port}")

    def server(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.PASSWORD, socket_timeout=0.5, socket_connect_timeout=0.5)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(
            port=port, password=self.SENTINEL_PASSWORD, socket_timeout=0.5, socket_connect_timeout=0.5
        )

    def role(self, port: int) -> str | None:
        try:
            return str(self.server(port).info("replication")["role"])
        except redis.RedisError:
            return None

    def _linked(self, port: int) -> bool:
        return self.server(port).info("replication").get("master_link_status") == "up"

    def _sentinels_agree(self) -> bool:
        try:
            states = [self.sentinel(port).sentinel_master(self.MASTER_NAME) for port in self.sentinel_ports]
        except redis.RedisError:
            return False
        return all(s["num-other-sentinels"] == 2 and s["num-slaves"] == 1 for s in states)

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels name it now."""
        named: list[int] = []
        for port in self.sentinel_ports:
            try:
                named.append(int(self.sentinel(port).sentinel_get_master_addr_by_name(self.MASTER_NAME)[1]))
            except (redis.RedisError, TypeError):
                continue
        best = max(set(named), key=named.count, default=None)
        return best if best is not None and named.count(best) >= 2 else None

    def env(self) -> dict[str, str]:
        """The settings that make a DSPex process reach this group through its sentinels."""
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": self.MASTER_NAME,
            "REDIS_SENTINEL_PASSWORD": self.SENTINEL_PASSWORD,
            "REDIS_PASSWORD": self.PASSWORD,
            "REDIS_DB": "0",
        }

    def kill(self, port: int) -> None:
        """SIGKILL one server: no shutdown, no last save, its clients' sockets just break."""
        self.procs[port].kill()
        self.procs[port].wait(timeout=10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
