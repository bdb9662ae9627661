"""TLS to Postgres: `sslmode=verify-full&sslrootcert=...` in DATABASE_URL is honoured.

One private Postgres (its own port and data directory) serves TLS with a certificate for
`localhost` signed by a CA the test makes. DSPex connects with verification, the connection
is really TLS, and a wrong CA or a host name the certificate does not name stops start-up
(`manage.py check --database default`, which `migrate` runs too) with a message naming the
verification, fast: no hang, no connection made without TLS.
"""

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.datatier.servers import TLSPostgres
from tests.support import ROOT, process_env

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TLSPostgres]:
    server = TLSPostgres()
    yield server
    server.close()


def manage(database_url: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=process_env(DATABASE_URL=database_url, DATABASE_CONNECT_TIMEOUT="5"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


PROBE = (
    "from django.db import connection\n"
    "with connection.cursor() as c:\n"
    "    c.execute('SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()')\n"
    "    ssl, version = c.fetchone()\n"
    "print('probe', ssl, version, connection.settings_dict['OPTIONS']['sslmode'])\n"
)


def test_it_connects_with_verify_full_over_tls(tls_postgres):
    url = tls_postgres.tls_url("localhost", tls_postgres.ca.cert)
    check, _ = manage(url, "check", "--database", "default")
    assert check.returncode == 0, check.stderr
    probe, _ = manage(url, "shell", "-c", PROBE)
    assert probe.returncode == 0, probe.stderr
    line = next(line for line in probe.stdout.splitlines() if line.startswith("probe "))
    _, ssl, version, sslmode = line.split()
    assert (ssl, sslmode) == ("True", "verify-full")
    assert version.startswith("TLSv1.")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", "certificate verify failed"),
        ("wrong_host", 'does not match host name "127.0.0.1"'),
    ],
)
def test_it_refuses_to_start_when_the_certificate_does_not_verify(tls_postgres, case, expected):
    if case == "wrong_ca":
        url = tls_postgres.tls_url("localhost", tls_postgres.other_ca.cert)
    else:  # the certificate names `localhost` only
        url = tls_postgres.tls_url("127.0.0.1", tls_postgres.ca.cert)
    done, elapsed = manage(url, "check", "--database", "default")
    assert done.returncode != 0
    assert "dspex_site.E010" in done.stderr
    assert expected in done.stderr
    assert "sslmode=verify-full" in done.stderr
    assert str(tls_postgres.ca.cert if case == "wrong_host" else tls_postgres.other_ca.cert) in done.stderr
    assert elapsed < 30  # refused, not waited out


def test_migrate_stops_at_the_same_check(tls_postgres):
    done, _ = manage(tls_postgres.tls_url("localhost", tls_postgres.other_ca.cert), "migrate", "--noinput")
    assert done.returncode != 0
    assert "dspex_site.E010" in done.stderr
    assert "certificate verify failed" in done.stderr
