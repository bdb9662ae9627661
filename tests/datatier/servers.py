"""Servers the data-tier tests start on ports of their own: PgBouncer (bench.dbservers) in
transaction mode in front of the machine's Postgres, and a private Postgres serving TLS with a
certificate from a CA the test makes (openssl CLI). Each is stopped, and its files removed, by
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

from bench.dbservers import own_by_postgres
from tests.support import PostgresServer, database_url_of_tests


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
