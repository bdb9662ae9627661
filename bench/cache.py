"""A fully cached one-step execution through the API, beside a Redis GET as the floor.

- floor: `GET` of a cached-answer-sized value from Redis, one connection, round trip;
- latency: `POST /api/v1/programs/{id}/execute/` with `wait=true`, one client, the same input
  every time, so the program's one LM call is always an LLM-cache hit (checked);
- saturation: `--clients` threads sending the same request as fast as they can for
  `--seconds`, against gunicorn with `--workers` processes (gthread, 4 threads each).

- the cache's own hit path in-process (`dspy.cache.get`: key, one Lua call, JSON decode);

The simulated provider is started but only answers the warm-up call. Prints p50/p99 and
requests/s, and the CPU per request of gunicorn and Postgres. Usage:
`python bench/cache.py [--n 500] [--clients 8] [--seconds 15] [--workers 2]` (needs Postgres and
Redis; uses the `dspex` database or DATABASE_URL, and REDIS_URL).
"""

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import free_port, server_env, setup_program, start_web, wait_http  # noqa: E402
from bench.sync_overhead import percentile, postgres_cpu_s, tree_cpu_s  # noqa: E402

QUESTION = {"question": "What does a fully cached execution cost?"}


def redis_floor(n: int) -> dict:
    """Round trips of a plain GET of a ~1 KB value (about the size of a cached answer)."""
    import redis

    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    client.set("bench:cache:floor", b"x" * 1000, ex=60)
    for _ in range(200):
        client.get("bench:cache:floor")
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        client.get("bench:cache:floor")
        latencies.append((time.perf_counter() - started) * 1000)
    client.delete("bench:cache:floor")
    return {"latencies": latencies, "rps": 1000 / statistics.mean(latencies)}


def cache_lookup(n: int) -> dict:
    """DSPex's own hit path in-process: key the request, one Lua round trip, decode (a 1 KB record)."""
    from caching.llm_cache import LLMCache

    cache = LLMCache()
    request = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "bench " * 100}]}
    cache.put({**request, "temperature": 0.0}, {"outputs": ["x" * 1000], "usage": {"prompt_tokens": 1}})
    for _ in range(200):
        cache.get({**request, "temperature": 0.0})
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        assert cache.get({**request, "temperature": 0.0}) is not None
        latencies.append((time.perf_counter() - started) * 1000)
    return {"latencies": latencies}


def caller(port: int, token: str, program_id: str) -> Callable[[], dict]:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {token}"
    url = f"http://127.0.0.1:{port}/api/v1/programs/{program_id}/execute/"

    def call() -> dict:
        response = session.post(url, json={"input": QUESTION, "wait": True}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    return call


def saturate(port: int, token: str, program_id: str, clients: int, seconds: float) -> dict:
    done, stop = [0] * clients, threading.Event()

    def run(index: int) -> None:
        call = caller(port, token, program_id)
        while not stop.is_set():
            call()
            done[index] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # ramp up
    start_count, started = sum(done), time.perf_counter()
    time.sleep(seconds)
    count, elapsed = sum(done) - start_count, time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    return {"rps": count / elapsed, "count": count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    floor = redis_floor(args.n * 4)
    token, program_id = setup_program("bench-cache-qa")
    lookup = cache_lookup(args.n * 4)
    sim_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(sim_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    web = None
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        web, port = start_web(server_env(f"http://127.0.0.1:{sim_port}/v1"), args.workers)
        call = caller(port, token, program_id)
        call()  # the one real LM call; everything after it is a cache hit
        for _ in range(50):
            body = call()
        assert body["metrics"]["cache_hits"] == body["metrics"]["lm_calls"] == 1, body["metrics"]
        latencies = []
        cpu0, pg0 = tree_cpu_s(web.pid), postgres_cpu_s()
        for _ in range(args.n):
            started = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - started) * 1000)
        web_cpu, pg_cpu = tree_cpu_s(web.pid) - cpu0, postgres_cpu_s() - pg0
        saturation = saturate(port, token, program_id, args.clients, args.seconds)
    finally:
        if web is not None:
            web.terminate()
            web.wait(timeout=20)
        sim.terminate()
        sim.wait(timeout=10)

    lat, fl = latencies, floor["latencies"]
    web_ms, pg_ms = web_cpu * 1000 / args.n, pg_cpu * 1000 / args.n
    print(f"machine: {psutil.cpu_count()} cores; gunicorn {args.workers} workers x 4 threads")
    print(f"Redis GET (floor)          p50 {statistics.median(fl):.3f} ms p99 {percentile(fl, 0.99):.3f} ms")
    print(f"                         {floor['rps']:.0f} GET/s on one connection")
    lk = lookup["latencies"]
    print(f"LLM cache hit, in-process  p50 {statistics.median(lk):.3f} ms p99 {percentile(lk, 0.99):.3f} ms")
    print(f"cached execution (1 client) p50 {statistics.median(lat):.1f} ms", end=" ")
    print(f"p99 {percentile(lat, 0.99):.1f} ms")
    print(f"  CPU per request: web {web_ms:.1f} ms + Postgres {pg_ms:.1f} ms")
    print(f"saturation ({args.clients} clients, {args.seconds:.0f} s): {saturation['rps']:.0f} requests/s")


if __name__ == "__main__":
    main()
