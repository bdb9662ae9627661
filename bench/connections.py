"""Postgres connections a deployment holds at N concurrent executions, with and without pooling.

One deployment on loopback (bench.common.start_stack: private redis-server, simlm with a long
latency so that every execution is in flight at once, gunicorn, Celery thread-pool workers)
runs `--n` background executions in each mode, against a private Postgres cluster started
here with room for them (`max_connections` 1000; the machine's has 100):

- `direct`: today's default, one persistent connection per thread that touched the database;
- `pool`: Django's psycopg pool in every process (`DSPEX_DB_POOL_MAX=--pool-max`);
- `pgbouncer`: PgBouncer in transaction mode (`default_pool_size=--bouncer-pool`) in front,
  `DSPEX_DB_POOLER=pgbouncer`, no in-process pool;
- `pgbouncer+pool`: both.

Printed per mode: the most Postgres backends seen on the benchmark database (polled every
20 ms; the benchmark's own connections excluded), the time from the first POST to the last row succeeding and
the executions per minute that makes (the same run, so the modes compare), and failures.

Usage: `python bench/connections.py [--n 200] [--latency-ms 3000] [--workers 2]
[--concurrency 100] [--web-workers 2] [--web-threads 16] [--modes direct,pool,pgbouncer] [--replica]`
(`--replica`: a streaming replica of the private cluster, `pg_basebackup`, whose largest lag
during each run is printed).
"""

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "k" * 50)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DJANGO_HTTPS", "0")

from bench.common import start_stack, stop_all  # noqa: E402
from bench.dbservers import PgBouncer, PrivatePostgres  # noqa: E402

DBNAME = "dspex_connections"
MODES = ("direct", "pool", "pgbouncer", "pgbouncer+pool")
POLLER = "dspex-bench-poller"  # the benchmark's own connections, not counted


class PeakBackends:
    """The most backends connected to the database at once, polled through a connection of its own."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True, application_name=POLLER)
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            row = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s",
                [DBNAME, POLLER],
            ).fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            time.sleep(0.02)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        self.conn.close()
        return self.peak


class ReplicaLag:
    """The largest lag of a streaming replica seen while it runs (dspex_site.db's measure:
    0 when all received WAL is replayed, else the age of the last replayed transaction)."""

    def __init__(self, url: str) -> None:
        from dspex_site.db import _LAG_SQL

        self.sql = _LAG_SQL
        self.conn = psycopg.connect(url, autocommit=True, application_name=POLLER)
        self.worst = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.done.is_set():
            row = self.conn.execute(self.sql).fetchone()
            if row and row[1] is not None:
                self.worst = max(self.worst, float(row[1]))
            time.sleep(0.02)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        self.conn.close()
        return self.worst


def run_mode(
    mode: str, args: argparse.Namespace, postgres: PrivatePostgres, tmp: Path, replica: PrivatePostgres | None
) -> dict:
    bouncer = PgBouncer(postgres.port, args.bouncer_pool, user="postgres") if "pgbouncer" in mode else None
    direct = postgres.url(DBNAME)
    os.environ["DATABASE_URL"] = bouncer.url(DBNAME) if bouncer else direct
    os.environ["DATABASE_DIRECT_URL"] = direct
    os.environ["DSPEX_DB_POOLER"] = "pgbouncer" if bouncer else ""
    os.environ["DSPEX_DB_POOL_MAX"] = str(args.pool_max) if mode in ("pool", "pgbouncer+pool") else "0"
    os.environ["DSPEX_DB_POOL_MIN"] = "1"
    procs, _env, token, program_id, port = start_stack(
        tmp,
        "bench-connections",
        web_workers=args.web_workers,
        web_threads=args.web_threads,
        workers=args.workers,
        pool="threads",
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        worker_name=f"conn-{mode}-",
    )
    from django.db import connections

    connections.close_all()  # the benchmark's own (setup) connection is not the deployment's
    peak = PeakBackends(direct)
    lag = ReplicaLag(replica.url(DBNAME)) if replica else None
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))
        url = f"http://127.0.0.1:{port}/api/v1/programs/{program_id}/execute/"
        started = time.monotonic()

        def post(i: int) -> str | None:
            body = {"input": {"question": f"{mode} connections {i} {started}?"}}
            response = session.post(url, json=body, timeout=60)
            return response.json()["id"] if response.status_code == 202 else None

        with ThreadPoolExecutor(32) as clients:
            ids = [i for i in clients.map(post, range(args.n)) if i]
        with psycopg.connect(direct, autocommit=True, application_name=POLLER) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FILTER (WHERE status IN ('pending', 'running')), "
                    "count(*) FILTER (WHERE status <> 'succeeded') "
                    "FROM cognitive_executions WHERE id = ANY(%s)",
                    [ids],
                ).fetchone()
                assert row is not None
                if row[0] == 0 or time.monotonic() - started > 300:
                    break
                time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        held = peak.stop()
        worst_lag = lag.stop() if lag else None
        stop_all(procs)
        if bouncer:
            bouncer.close()
    return {
        "mode": mode,
        "peak_backends": held,
        "accepted": len(ids),
        "not_succeeded": int(row[1]),
        "seconds": elapsed,
        "per_min": len(ids) / elapsed * 60,
        "replica_lag_s": worst_lag,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="executions, all in flight at once")
    parser.add_argument("--latency-ms", type=float, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=100, help="threads per worker")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=16)
    parser.add_argument("--pool-max", type=int, default=10, help="DSPEX_DB_POOL_MAX in the pool modes")
    parser.add_argument("--bouncer-pool", type=int, default=20, help="PgBouncer default_pool_size")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--replica", action="store_true", help="also stream to a replica and report its lag")
    args = parser.parse_args()
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(modes) - set(MODES)
    if unknown:
        sys.exit(f"unknown mode(s) {sorted(unknown)}; choose from {', '.join(MODES)}")
    postgres = PrivatePostgres(max_connections=1000)
    replica = PrivatePostgres(primary=postgres, max_connections=1000) if args.replica else None
    tmp = Path(tempfile.mkdtemp(prefix="dspex-bench-conn-"))
    results = []
    try:
        postgres.create_database(DBNAME)
        os.environ["DATABASE_URL"] = postgres.url(DBNAME)
        import django

        django.setup()  # the benchmark's own connection: always direct, settings read once here
        for mode in modes:
            results.append(run_mode(mode, args, postgres, tmp, replica))
            print(_line(results[-1]), flush=True)
    finally:
        if replica:
            replica.close()
        postgres.close()
        shutil.rmtree(tmp, ignore_errors=True)
    threads = args.web_workers * args.web_threads + args.workers * args.concurrency
    print(
        f"\n{args.n} executions in flight, simlm {args.latency_ms:.0f} ms; {args.web_workers} web x "
        f"{args.web_threads} threads + {args.workers} workers x {args.concurrency} threads = {threads} "
        f"threads; "
        f"pool max {args.pool_max} per process, PgBouncer pool {args.bouncer_pool}"
    )
    for result in results:
        print(_line(result))


def _line(result: dict) -> str:
    return (
        f"{result['mode']:>15}: peak {result['peak_backends']:4d} Postgres backends; "
        f"{result['accepted']} executions in {result['seconds']:.1f} s ({result['per_min']:,.0f}/min), "
        f"{result['not_succeeded']} not succeeded"
        + (
            f"; replica lag at most {result['replica_lag_s']:.3f} s"
            if result["replica_lag_s"] is not None
            else ""
        )
    )


if __name__ == "__main__":
    main()
