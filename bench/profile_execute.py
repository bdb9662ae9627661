"""Where a synchronous execution's CPU goes: the profile the hot-path work is driven by.

Runs `POST /api/v1/programs/{id}/execute/` (`wait=true`) in this process through Django's
test client (the whole middleware, DRF, auth, runner, DSPy, gateway path; no HTTP server)
against `manage.py simlm` over real HTTP (0 ms), then prints, per request:

- every SQL statement and Redis command one warm request sends (counted at the client);
- CPU milliseconds per request without a profiler, and a cProfile with a CPU clock
  (`time.process_time`) of `--n` requests: the top functions by cumulative and by own time.

`--mode cached` sends the same input every time (warm: answered from the execution answer
cache), `--mode uncached` a unique input with `"cache": false`. Postgres and Redis CPU are not
in these figures (see bench/peers.py for every process of a deployment).

Usage: `python bench/profile_execute.py [--mode cached|uncached] [--n 300] [--top 40] [--save FILE]`
(needs Postgres; uses the `dspex_profile` database, created and migrated if missing).
"""

import argparse
import collections
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("PROFILE_DATABASE_URL", "postgres://localhost:5432/dspex_profile")

from bench.common import free_port, server_env, setup_program, wait_http  # noqa: E402


def create_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["cached", "uncached"], default="cached")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--save", metavar="FILE", help="also write the profile there (pstats format)")
    args = parser.parse_args()

    port = free_port()
    command = [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "DJANGO_DEBUG": "1"}  # simlm only: the profiled code runs production settings
    sim = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=90)
        os.environ.update(server_env(f"http://127.0.0.1:{port}/v1"))
        os.environ.update(
            DATABASE_URL=DB_URL, DJANGO_ALLOWED_HOSTS="*", DJANGO_SETTINGS_MODULE="dspex_site.settings"
        )
        create_database(DB_URL)
        profile(args)
    finally:
        sim.kill()


def profile(args: argparse.Namespace) -> None:
    token, program_id = setup_program("profile-qa")
    import redis.connection
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    cached = args.mode == "cached"

    def execute(i: int) -> None:
        question = "the same question?" if cached else f"question {i} at {time.time()}?"
        body = {"input": {"question": question}, "wait": True, "cache": cached}
        response = client.post(
            f"/api/v1/programs/{program_id}/execute/", body, content_type="application/json"
        )
        assert response.status_code == 200, response.content[:300]

    for i in range(30):
        execute(i)

    statements: collections.Counter[str] = collections.Counter()
    commands: collections.Counter[str] = collections.Counter()

    def count_sql(execute_sql, sql, params, many, context):  # type: ignore[no-untyped-def]
        statements[" ".join(sql.split()[:4])[:80]] += 1
        return execute_sql(sql, params, many, context)

    send = redis.connection.AbstractConnection.send_command

    def count_redis(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        commands[str(args[0])] += 1
        return send(self, *args, **kwargs)

    redis.connection.AbstractConnection.send_command = count_redis  # type: ignore[method-assign]
    try:
        with connection.execute_wrapper(count_sql):
            execute(0)
    finally:
        redis.connection.AbstractConnection.send_command = send  # type: ignore[method-assign]
    print(f"mode {args.mode}: one warm request sends")
    print(f"  SQL {sum(statements.values())}: " + "; ".join(f"{n} x {s}" for s, n in statements.items()))
    print(f"  Redis {sum(commands.values())}: " + "; ".join(f"{n} x {c}" for c, n in commands.items()))

    started_cpu, started = time.process_time(), time.perf_counter()
    for i in range(args.n):
        execute(i)
    cpu_ms = (time.process_time() - started_cpu) * 1000 / args.n
    wall_ms = (time.perf_counter() - started) * 1000 / args.n
    print(f"  {cpu_ms:.2f} ms CPU, {wall_ms:.2f} ms wall per request in this process (no profiler)")

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for i in range(args.n):
        execute(i)
    profiler.disable()
    if args.save:
        profiler.dump_stats(args.save)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue().replace(str(ROOT / ".venv" / "lib" / "python3.11" / "site-packages") + "/", ""))


if __name__ == "__main__":
    main()
