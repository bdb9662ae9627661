"""End-to-end throughput of background executions, and the CPU they cost.

`POST /api/v1/programs/{id}/execute/` (202) → Celery worker → simulated provider over HTTP with
200 ms latency → row `succeeded`. Load comes from `--clients` threads posting as fast as the
API answers; the clock runs from the first POST to the last row succeeding. CPU is summed over
every process that serves the executions: gunicorn, the Celery workers, this benchmark's own
redis-server (broker and cache) and the Postgres backends connected to the benchmark database
(polled, so backends that come and go during the run count too)
(the provider, simlm, is reported apart: it stands in for a remote LLM).

Usage: `python bench/throughput.py [--n 3000] [--workers 2] [--concurrency 32] [--web-workers 2]
[--clients 32] [--latency-ms 200] [--profile]` (needs Postgres; uses the `dspex_bench` database,
created and migrated if missing, and starts its own redis-server on a free port).
`--profile N` instead runs N executions' API request and worker task in this process under
cProfile and prints where their CPU goes.
"""

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://localhost:5432/dspex_bench")
os.environ["DATABASE_URL"] = DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "k" * 50)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DJANGO_HTTPS", "0")  # plain http on 127.0.0.1

from bench.common import BackendCPU, start_stack, stop_all  # noqa: E402


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
        except psutil.Error:
            pass
    return total


def tree(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="executions to run")
    parser.add_argument("--workers", type=int, default=2, help="Celery worker processes (threads pool)")
    parser.add_argument("--concurrency", type=int, default=32, help="threads per worker")
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=8)
    parser.add_argument("--clients", type=int, default=32, help="client threads posting executions")
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument(
        "--cache",
        action="store_true",
        help="let every (unique) execution write its LLM and answer cache entries, to size Redis memory",
    )
    parser.add_argument("--profile-out", metavar="DIR", help="with --profile: save the pstats files there")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead: profile N executions' web and worker code paths",
    )
    args = parser.parse_args()

    from dspex_site.launch import postgres_problem

    problem = postgres_problem(DB_URL)
    if problem:
        sys.exit(problem)
    tmp = Path(tempfile.mkdtemp(prefix="dspex-bench-"))
    procs: dict[str, subprocess.Popen] = {}
    try:
        # Profiling runs both halves in this process: a worker would take the tasks it publishes.
        procs, env, token, program_id, web_port = start_stack(
            tmp,
            "bench-throughput-qa",
            web_workers=args.web_workers,
            web_threads=args.web_threads,
            workers=0 if args.profile else args.workers,
            pool=args.pool,
            concurrency=args.concurrency,
            latency_ms=args.latency_ms,
            worker_name="bench",
        )
        if args.profile:
            profile(args.profile, program_id, env, args.profile_out)
        else:
            run(args, procs, token, program_id, web_port)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def profile(n: int, program_id: str, env: dict, out: str | None = None) -> None:
    """Both halves of a background execution, in this process under cProfile with a CPU clock:
    the API request (view → row → publish) and the worker's task body (claim → run → record)."""
    import cProfile

    from django.conf import settings
    from rest_framework.test import APIClient

    from executions.tasks import run_execution_task
    from llm import gateway

    for key in ("DSPEX_LM", "DSPEX_LM_API_BASE", "DSPEX_LM_API_KEY"):
        setattr(settings, key, env[key])
    settings.ALLOWED_HOSTS = ["*"]
    gateway.reset()
    from django.contrib.auth import get_user_model

    client = APIClient()
    client.force_authenticate(get_user_model().objects.get(username="bench"))
    url = f"/api/v1/programs/{program_id}/execute/"

    def submit(i: int) -> str:
        body = {"input": {"question": f"profiled {time.time_ns()}-{i}?"}, "cache": False}
        response = client.post(url, body, format="json")
        assert response.status_code == 202, (response.status_code, response.headers)
        return response.json()["id"]

    for i in range(20):  # warm up
        run_execution_task.run(submit(-i - 1))
    for name, step in (("API request", submit), ("worker task", None)):
        ids = [submit(i) for i in range(n)] if step is None else None
        prof = cProfile.Profile(time.process_time)
        cpu0 = time.process_time()
        prof.enable()
        if step is not None:
            for i in range(n):
                step(i)
        else:
            statuses = [run_execution_task.run(execution_id) for execution_id in ids]
        prof.disable()
        cpu = (time.process_time() - cpu0) * 1000 / n
        print(f"\n== {name}: {cpu:.2f} ms CPU each (this process only; Postgres and Redis not included)")
        if step is None:
            print("outcomes:", {s: statuses.count(s) for s in set(statuses)})
        if out:
            prof.dump_stats(Path(out) / f"{name.replace(' ', '_')}.pstats")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def run(args: argparse.Namespace, procs: dict, token: str, program_id: str, web_port: int) -> None:
    from executions.models import CognitiveExecution

    url = f"http://127.0.0.1:{web_port}/api/v1/programs/{program_id}/execute/"
    local = threading.local()

    def post(i: int) -> str:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
        body = {"input": {"question": f"Throughput question {time.time_ns()}-{i}?"}, "cache": args.cache}
        response = session.post(url, json=body, timeout=60)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    # Warm up every process (imports, compiled program, connections), then measure.
    with ThreadPoolExecutor(args.clients) as pool:
        warm = list(pool.map(post, range(-args.clients * 2, 0)))
    deadline = time.monotonic() + 120
    while CognitiveExecution.objects.filter(id__in=warm, status="succeeded").count() < len(warm):
        if time.monotonic() > deadline:
            sys.exit("warm-up executions did not finish; see the worker logs")
        time.sleep(0.2)
    time.sleep(1)

    groups = {name: tree(proc.pid) for name, proc in procs.items()}
    before = {name: cpu_s(p) for name, p in groups.items()}
    redis_memory = RedisMemory(os.environ["REDIS_URL"])
    postgres = BackendCPU("dspex_bench")
    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        ids = list(pool.map(post, range(args.n)))
    accepted_s = time.perf_counter() - started
    while True:
        done = CognitiveExecution.objects.filter(id__in=ids, status__in=CognitiveExecution.FINISHED).count()
        if done >= len(ids):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    after = {name: cpu_s(p) for name, p in groups.items()}
    pg_cpu = postgres.stop()
    redis_figures = redis_memory.stop()
    succeeded = CognitiveExecution.objects.filter(id__in=ids, status="succeeded").count()

    cpu = {name: after[name] - before[name] for name in groups}
    workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
    served = cpu["web"] + workers + cpu["redis"] + pg_cpu
    n = len(ids)
    print(f"\n{n} executions ({succeeded} succeeded), provider latency {args.latency_ms:.0f} ms")
    print(
        f"settings: web {args.web_workers} x {args.web_threads} threads (gthread); "
        f"{args.workers} worker(s) -P {args.pool} -c {args.concurrency}; {args.clients} client threads"
    )
    print(f"accepted (202) in {accepted_s:.1f} s; all finished in {elapsed:.1f} s")
    print(f"throughput: {n / elapsed * 60:,.0f} executions/min end to end")
    print(f"CPU per execution: {served * 1000 / n:.1f} ms (web + workers + Redis + Postgres)")
    print(
        f"  web {cpu['web'] * 1000 / n:.1f} ms, workers {workers * 1000 / n:.1f} ms, "
        f"Redis {cpu['redis'] * 1000 / n:.2f} ms, Postgres {pg_cpu * 1000 / n:.1f} ms; "
        f"(simlm, the provider: {cpu['simlm'] * 1000 / n:.1f} ms)"
    )
    print(
        "Redis (broker and caches): used memory {start:.1f} MB before, {peak:.1f} MB at peak, "
        "{end:.1f} MB after; retained {per:,.0f} bytes per execution{cached}; {keys:,} keys".format(
            start=redis_figures["start"] / 1e6,
            peak=redis_figures["peak"] / 1e6,
            end=redis_figures["end"] / 1e6,
            per=(redis_figures["end"] - redis_figures["start"]) / n,
            cached=" (its LLM and answer cache entries)" if args.cache else " (cache off)",
            keys=redis_figures["keys"],
        )
    )
    print(f"machine: {psutil.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")


class RedisMemory:
    """The benchmark's redis-server's `used_memory`, sampled every 50 ms from start to `stop()`:
    the queued messages show in the peak, what the run leaves behind (cache entries) in the end."""

    def __init__(self, url: str):
        import redis

        self.client = redis.Redis.from_url(url)
        self.start = self.peak = self.used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.used())

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        end = self.used()
        peak = max(self.peak, end)
        return {"start": self.start, "peak": peak, "end": end, "keys": int(self.client.dbsize())}


if __name__ == "__main__":
    main()
