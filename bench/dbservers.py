"""Database servers the benchmarks and tests start on ports of their own: PgBouncer in
transaction mode in front of a Postgres, and a private Postgres cluster with settings of its
own (e.g. more `max_connections` than the machine's). Each is stopped, and its files removed,
by whoever made it; nothing here reconfigures the machine's Postgres."""

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from bench.common import free_port


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def own_by_postgres(path: Path) -> None:
    """PgBouncer and Postgres refuse to run as root: their files belong to `postgres`."""
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class PgBouncer:
    """`pgbouncer` on a free port, `pool_mode = transaction`, every database forwarded to the
    Postgres on 127.0.0.1:`upstream_port` (the machine's by default); trust auth, as that
    Postgres trusts localhost; clients connect as `user` (default: this OS user)."""

    def __init__(self, upstream_port: int = 5432, pool_size: int = 10, user: str | None = None) -> None:
        binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
        if binary is None:
            raise RuntimeError("pgbouncer is required (Debian package `pgbouncer`; .ci/run installs it)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dspex-pgbouncer-"))
        self.user = user or getpass.getuser()  # the role clients connect as (trusted upstream)
        users = {self.user, "postgres"}
        (self.dir / "userlist.txt").write_text("".join(f'"{user}" ""\n' for user in sorted(users)))
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={upstream_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            "max_client_conn = 1000\n"
            f"admin_users = {self.user}\n"
            f"stats_users = {self.user}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
        )
        for path in [self.dir, *self.dir.iterdir()]:
            own_by_postgres(path)
        user = "postgres" if os.geteuid() == 0 else None
        self.proc = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")],
            user=user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 15, f"pgbouncer on port {self.port}")

    def url(self, dbname: str) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _answers(self) -> bool:
        try:
            self.show("VERSION")
        except psycopg.Error:
            return False
        return True

    def show(self, what: str) -> list[dict]:
        """`SHOW <what>` on PgBouncer's admin console, as dicts."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True, prepare_threshold=None) as conn:
            cursor = conn.execute(f"SHOW {what}")
            columns = [column.name for column in cursor.description or ()]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def log(self) -> str:
        path = self.dir / "pgbouncer.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivatePostgres:
    """A Postgres cluster of its own (initdb into a temporary directory, `pg_ctl` on a free
    port, trust auth on 127.0.0.1), with extra server settings (`max_connections=500`, ...);
    with `primary`, a streaming replica of that cluster (`pg_basebackup -R`)."""

    def __init__(self, primary: "PrivatePostgres | None" = None, **settings: object) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dspex-pg-"))
        own_by_postgres(self.dir)
        self.data = self.dir / "data"
        if primary is None:
            self._run(["initdb", "-A", "trust", "-U", "postgres", "-D", str(self.data)])
        else:  # a streaming replica of `primary` (initdb's pg_hba trusts replication on 127.0.0.1)
            source = ["-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"]
            self._run(["pg_basebackup", *source, "-D", str(self.data), "-R", "-X", "stream"])
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {key}={value}" for key, value in settings.items())
        self._options = options
        self.start()

    def start(self) -> None:
        argv = [
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            self._options,
            "-w",
            "start",
        ]
        self._run(argv)

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def _run(self, argv: list[str]) -> None:
        # initdb and postgres refuse to run as root: as root, run them as the `postgres` user.
        user = "postgres" if os.geteuid() == 0 else None
        subprocess.run(argv, check=True, user=user, cwd=self.dir, capture_output=True)

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, dbname: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
