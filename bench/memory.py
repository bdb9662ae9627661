"""Memory of long-running web and worker processes under many executions: does any of them grow?

Runs `--n` executions against `simlm` (0 ms by default): half synchronous (`wait=true`, run
inside gunicorn's workers), half queued (202, run by a Celery worker), from `--clients` threads.
After a warm-up (imports, compiled program, connection pools), the RSS of every gunicorn worker
and every Celery worker process is sampled every `--every-s` seconds; at the end each process's
start / peak / end RSS and its growth (end against start) are printed, with the aim: flat
(within ±5%) and at most 200 MB each.

Usage: `python bench/memory.py [--n 20000] [--clients 8] [--sync-share 0.5] [--web-workers 2]
[--web-threads 4] [--workers 1] [--concurrency 16] [--latency-ms 0] [--every-s 2]`; a smoke run:
`--n 1000 --warmup 100`. Needs Postgres (the `dspex_bench` database, migrated if needed) and
starts its own redis-server on a free port.
"""

import argparse
import contextlib
import os
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
os.environ.setdefault("DJANGO_HTTPS", "0")  # plain http on 127.0.0.1

from bench.common import start_stack, stop_all  # noqa: E402

MB = 1024 * 1024
AIM_GROWTH, AIM_MB = 5.0, 200


class Sampler:
    """RSS of the serving processes every `every_s`: gunicorn's workers (its arbiter only forks
    them) and each Celery worker process with its pool children, by pid."""

    def __init__(self, groups: dict[str, subprocess.Popen], every_s: float) -> None:
        self.groups, self.every_s = groups, every_s
        self.samples: dict[str, list[float]] = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def processes(self) -> dict[str, psutil.Process]:
        found = {}
        for name, popen in self.groups.items():
            parent = psutil.Process(popen.pid)
            children = parent.children(recursive=True)
            if name == "web":  # the arbiter serves nothing: its workers do
                for i, child in enumerate(sorted(children, key=lambda p: p.pid)):
                    found[f"web worker {i} (pid {child.pid})"] = child
            else:
                found[f"{name} (pid {parent.pid})"] = parent
                for child in children:
                    found[f"{name} child (pid {child.pid})"] = child
        return found

    def sample(self) -> None:
        for label, proc in self.processes().items():
            with contextlib.suppress(psutil.Error):
                self.samples.setdefault(label, []).append(proc.memory_info().rss / MB)

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="executions after the warm-up")
    parser.add_argument("--warmup", type=int, default=2000, help="executions before the first sample")
    parser.add_argument("--sync-share", type=float, default=0.5, help="share run with wait=true")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="Celery worker processes (threads pool)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--every-s", type=float, default=2.0, help="seconds between RSS samples")
    args = parser.parse_args()

    from dspex_site.launch import postgres_problem

    problem = postgres_problem(DB_URL)
    if problem:
        sys.exit(problem)
    tmp = Path(tempfile.mkdtemp(prefix="dspex-memory-"))
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs, _env, token, program_id, web_port = start_stack(
            tmp,
            "bench-memory-qa",
            web_workers=args.web_workers,
            web_threads=args.web_threads,
            workers=args.workers,
            pool="threads",
            concurrency=args.concurrency,
            latency_ms=args.latency_ms,
            worker_name="mem",
        )
        run(args, procs, token, program_id, web_port)
    finally:
        stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, procs: dict, token: str, program_id: str, web_port: int) -> None:
    from executions.models import CognitiveExecution

    url = f"http://127.0.0.1:{web_port}/api/v1/programs/{program_id}/execute/"
    local = threading.local()
    sync_every = round(1 / args.sync_share) if args.sync_share else 0

    def post(i: int) -> tuple[str, bool]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Token {token}"
        wait = bool(sync_every) and i % sync_every == 0
        body = {"input": {"question": f"Memory question {time.time_ns()}-{i}?"}, "cache": False, "wait": wait}
        response = session.post(url, json=body, timeout=120)
        assert response.status_code == (200 if wait else 202), response.text
        return response.json()["id"], wait

    def drive(indexes: range) -> list[str]:
        with ThreadPoolExecutor(args.clients) as pool:
            posted = list(pool.map(post, indexes))
        queued = [execution_id for execution_id, wait in posted if not wait]
        deadline = time.monotonic() + 600
        finished = CognitiveExecution.FINISHED
        while CognitiveExecution.objects.filter(id__in=queued, status__in=finished).count() < len(queued):
            if time.monotonic() > deadline:
                sys.exit("queued executions did not finish; see the worker logs")
            time.sleep(0.2)
        return [execution_id for execution_id, _ in posted]

    drive(range(-args.warmup, 0))
    sampler = Sampler({k: v for k, v in procs.items() if k == "web" or k.startswith("worker")}, args.every_s)
    sampler.start()
    started = time.perf_counter()
    ids = []
    for chunk in range(0, args.n, 2000):  # chunks: bounded id lists for the polling query
        ids += drive(range(chunk, min(args.n, chunk + 2000)))
    elapsed = time.perf_counter() - started
    sampler.stop()
    succeeded = CognitiveExecution.objects.filter(id__in=ids, status="succeeded").count()

    n_sync = sum(1 for i in range(args.n) if sync_every and i % sync_every == 0)
    print(
        f"\n{args.n} executions ({n_sync} wait=true, {args.n - n_sync} queued; {succeeded} succeeded) "
        f"in {elapsed:.0f} s after {args.warmup} warm-up; simlm {args.latency_ms:.0f} ms"
    )
    print(
        f"web {args.web_workers} x {args.web_threads} threads; {args.workers} worker(s) -P threads "
        f"-c {args.concurrency}; RSS sampled every {args.every_s:g} s"
    )
    aim = f"aim (±{AIM_GROWTH:g}%, ≤{AIM_MB} MB)"
    print(
        f"{'process':34} {'start MB':>9} {'peak MB':>8} {'end MB':>7} {'growth':>7}  {aim}  at 1/4, 1/2, 3/4"
    )
    for label, values in sampler.samples.items():
        first, peak, last = values[0], max(values), values[-1]
        growth = (last - first) / first * 100
        ok = abs(growth) <= AIM_GROWTH and peak <= AIM_MB
        # Whether it levels off or keeps growing: RSS a quarter, half and three quarters through.
        quarters = " / ".join(f"{values[len(values) * q // 4]:.1f}" for q in (1, 2, 3))
        verdict = "ok" if ok else "MISSED"
        print(f"{label:34} {first:9.1f} {peak:8.1f} {last:7.1f} {growth:+6.1f}%  {verdict:23}  {quarters}")
    print(f"machine: {psutil.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
