"""What routing costs per LM call, and how long a dead provider takes to be routed around.

(a) Overhead per LM call, sequential, cache off, `manage.py simlm` (0 ms) over DSPy's real HTTP
    path: DSPy's own `dspy.LM` straight at the server vs the gateway LM (`llm.gateway.lm_for`)
    — admission (two Redis scripts), budget check, routing, cost, telemetry — for
      * a single provider (the default provider `openai`, `openai/gpt-4o-mini`),
      * a model alias with two weighted deployments (`bench-alias` → `p1/…`, `p2/…`),
      * a model with a fallback list, the primary healthy (`p1/gpt-4o-mini` → `p2/gpt-4o-mini`).
    Median over `--rounds` of this process's CPU µs per call and p50 latency (Redis' own CPU is
    printed apart: the benchmark starts its own redis-server).
(b) Failover: two more simlm instances as providers `primary` and `secondary`, fallbacks
    `primary/gpt-4o-mini` → `secondary/gpt-4o-mini`, `--threads` threads calling the gateway LM in
    a steady stream; the primary's process is killed (`--mode kill`: SIGKILL, connections refused
    at once; `--mode stop`: SIGSTOP, it hangs and calls time out) and the benchmark measures from
    the kill until every call is answered by the secondary, counting calls that failed meanwhile
    (zero when fallbacks work). Who answered is read from each call's call log (`deployment`,
    else the model of the provider request that succeeded) and checked against the servers'
    request counters.

Model aliases, named providers and fallbacks need the routing through the registry; a scenario
the running code cannot route is reported as not available, with the error, and the others run.
Usage: `python bench/routing.py [--n 300] [--rounds 5] [--mode kill|stop]` (needs Postgres: the
`dspex_bench` database, created and migrated if missing).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://localhost:5432/dspex_bench")

from bench.common import free_port, redis_server_command, wait_http  # noqa: E402

# simlm answers any model name; one DSPy's price table knows keeps the direct path from scanning
# that table on every call (what `llm.pricing` memoises), as in bench/sync_overhead.py.
MODEL = "gpt-4o-mini"
PROMPT = "What is the capital of France?"


def start_simlm(*args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_DEBUG": "1"},  # the simulator is a test target, not DSPex
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health", timeout=60)
    return proc, f"http://127.0.0.1:{port}/v1"


def sim_requests(base_url: str) -> int:
    return int(requests.get(base_url.removesuffix("/v1") + "/_sim/stats", timeout=5).json()["requests"])


def configure(
    redis_url: str, overhead_url: str, primary_url: str, secondary_url: str, timeout_s: float
) -> None:
    """Settings of this process, before Django starts: every scenario in one configuration."""
    os.environ.update(
        DATABASE_URL=DB_URL,
        REDIS_URL=redis_url,
        DJANGO_SETTINGS_MODULE="dspex_site.settings",
        DJANGO_DEBUG="0",
        DJANGO_HTTPS="0",
        DJANGO_SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY") or "bench-" + "k" * 50,
        LOG_LEVEL="ERROR",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        DSPEX_LM=f"openai/{MODEL}",
        DSPEX_LM_API_BASE=overhead_url,
        DSPEX_LM_API_KEY="sk-bench-default",
        DSPEX_LM_TIMEOUT_S=str(timeout_s),
        BENCH_KEY_P1="sk-bench-p1",
        BENCH_KEY_P2="sk-bench-p2",
        BENCH_KEY_PRIMARY="sk-bench-primary",
        BENCH_KEY_SECONDARY="sk-bench-secondary",
        DSPEX_PROVIDERS=json.dumps(
            {
                "p1": {"kind": "openai", "api_base": overhead_url, "api_key_env": "BENCH_KEY_P1"},
                "p2": {"kind": "openai", "api_base": overhead_url, "api_key_env": "BENCH_KEY_P2"},
                "primary": {
                    "kind": "openai",
                    "api_base": primary_url,
                    "api_key_env": "BENCH_KEY_PRIMARY",
                    "timeout_s": timeout_s,
                },
                "secondary": {
                    "kind": "openai",
                    "api_base": secondary_url,
                    "api_key_env": "BENCH_KEY_SECONDARY",
                },
            }
        ),
        DSPEX_MODEL_DEPLOYMENTS=json.dumps(
            {
                "bench-alias": {
                    "strategy": "weighted",
                    "deployments": [
                        {"model": f"p1/{MODEL}", "weight": 1},
                        {"model": f"p2/{MODEL}", "weight": 1},
                    ],
                }
            }
        ),
        DSPEX_MODEL_FALLBACKS=json.dumps(
            {f"p1/{MODEL}": [f"p2/{MODEL}"], f"primary/{MODEL}": [f"secondary/{MODEL}"]}
        ),
    )


def setup_django() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)  # the gateway's budget check reads the Budget table


# --- (a) overhead ---------------------------------------------------------------------------------
def timed_calls(lm: Any, n: int) -> tuple[float, float]:
    """(CPU µs per call of this process, p50 latency ms) over n sequential calls."""
    import dspy

    with dspy.context(disable_history=True):
        for _ in range(20):
            lm(PROMPT)
        latencies = []
        cpu0 = time.process_time()
        for _ in range(n):
            started = time.perf_counter()
            lm(PROMPT)
            latencies.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu0
    return cpu * 1e6 / n, statistics.median(latencies)


def probe(lm: Any) -> str | None:
    """Call once and say which provider answered (from the call log)."""
    from llm import calllog

    log = calllog.begin_call()
    try:
        lm(PROMPT)
    finally:
        calllog.end_call()
    return answered_by(log)


def overhead(overhead_url: str, redis_pid: int, n: int, rounds: int) -> None:
    import dspy
    from django.conf import settings

    from llm import gateway

    direct = dspy.LM(
        f"openai/{MODEL}",
        api_base=overhead_url,
        api_key="sk-bench-direct",
        cache=False,
        num_retries=0,
        max_tokens=settings.DSPEX_LM_MAX_TOKENS,
    )
    paths: dict[str, Any] = {"DSPy direct": direct}
    problems: dict[str, str] = {}
    for label, model, expected in (
        ("gateway, one provider", f"openai/{MODEL}", {"openai"}),
        ("gateway, 2-deployment alias", "bench-alias", {"p1", "p2"}),
        ("gateway, with fallbacks", f"p1/{MODEL}", {"p1"}),
    ):
        try:
            lm = gateway.lm_for({"model": model}, cache=False)
            # Check it is routed as configured (a code without aliases would send `bench-alias`
            # to the default provider as a model name, and simlm answers any name).
            served = {probe(lm) for _ in range(8)}
        except Exception as exc:
            problems[label] = f"{type(exc).__name__}: {str(exc)[:150]}"
            continue
        if not served <= expected or None in served:
            problems[label] = f"answered by {sorted(map(str, served))}, not by {sorted(expected)}"
            continue
        paths[label] = lm
    results: dict[str, list[tuple[float, float, float]]] = {label: [] for label in paths}
    redis = psutil.Process(redis_pid)
    # Rounds alternate between the paths so machine noise hits them alike.
    for _ in range(rounds):
        for label, lm in paths.items():
            redis0 = sum(redis.cpu_times()[:2])
            cpu_us, p50 = timed_calls(lm, n)
            redis_us = (sum(redis.cpu_times()[:2]) - redis0) * 1e6 / n
            results[label].append((cpu_us, p50, redis_us))

    print(
        f"(a) routing overhead per LM call: simlm 0 ms over HTTP, cache off, n={n} x {rounds} rounds (median)"
    )
    print(f"{'path':<30}{'CPU µs/call':>13}{'vs direct':>11}{'p50 ms':>9}{'vs direct':>11}{'Redis µs':>10}")
    base_cpu = statistics.median(r[0] for r in results["DSPy direct"])
    base_p50 = statistics.median(r[1] for r in results["DSPy direct"])
    for label, rows in results.items():
        cpu = statistics.median(r[0] for r in rows)
        p50 = statistics.median(r[1] for r in rows)
        redis_us = statistics.median(r[2] for r in rows)
        row = f"{label:<30}{cpu:>13.0f}{cpu - base_cpu:>+11.0f}{p50:>9.2f}{p50 - base_p50:>+11.2f}"
        print(f"{row}{redis_us:>10.0f}")
    for label, problem in problems.items():
        print(f"{label:<30}not available with this code: {problem}")


# --- (b) failover ---------------------------------------------------------------------------------
@dataclass
class Call:
    started: float
    ended: float
    answered_by: str | None  # "primary", "secondary", or None when the call failed
    error: str | None = None


def answered_by(log: Any) -> str | None:
    """Who answered one LM call, from its call log: the deployment (or model) of the last provider
    request that succeeded."""
    answered = getattr(log, "deployment", None)  # what the routing names as the answer
    if answered:
        return str(answered).partition("/")[0]
    for call in reversed(log.calls if log else []):
        if call.error is None:
            deployment = getattr(call, "deployment", None) or call.model
            return str(deployment).partition("/")[0]
    return None


def failover(
    procs: dict[str, subprocess.Popen], urls: dict[str, str], threads: int, mode: str, after_s: float
) -> None:
    from llm import calllog, gateway
    from monitoring import telemetry

    try:
        lm = gateway.lm_for({"model": f"primary/{MODEL}"}, cache=False)
        if probe(lm) != "primary":
            raise RuntimeError("`primary/...` is not answered by the primary provider")
    except Exception as exc:
        print(f"(b) failover: not available with this code: {type(exc).__name__}: {str(exc)[:150]}")
        return
    secondary = gateway.lm_for({"model": f"secondary/{MODEL}"}, cache=False)
    secondary(PROMPT)  # its connection pool is warm, as in a running service
    fallback_reasons: Counter[str] = Counter()

    def on_event(event: str, measurements: dict, metadata: dict) -> None:
        if event == "llm.fallback":
            fallback_reasons[str(metadata.get("reason"))] += 1

    telemetry.attach(on_event)
    calls: list[Call] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream() -> None:
        import dspy

        with dspy.context(disable_history=True):
            while not stop.is_set():
                log = calllog.begin_call()
                started = time.monotonic()
                error = None
                try:
                    lm(PROMPT)
                except Exception as exc:
                    error = f"{type(exc).__name__}: {str(exc)[:100]}"
                finally:
                    calllog.end_call()
                ended = time.monotonic()
                with lock:
                    calls.append(Call(started, ended, None if error else answered_by(log), error))
                time.sleep(0.005)

    workers = [threading.Thread(target=stream, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    secondary_before = sim_requests(urls["secondary"])
    killed_at = time.monotonic()
    os.kill(procs["primary"].pid, signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
    time.sleep(after_s)
    stop.set()
    for worker in workers:
        worker.join(timeout=60)
    telemetry.detach(on_event)
    if mode == "stop":
        os.kill(procs["primary"].pid, signal.SIGKILL)
    secondary_served = sim_requests(urls["secondary"]) - secondary_before

    before = [c for c in calls if c.ended < killed_at]
    after = sorted((c for c in calls if c.ended >= killed_at), key=lambda c: c.started)
    # The first call from which on every call was answered by the secondary.
    switched: Call | None = None
    for index, call in enumerate(after):
        if all(c.answered_by == "secondary" for c in after[index:]):
            switched = call
            break
    failed = [c for c in after if c.error]
    how = "killed (SIGKILL)" if mode == "kill" else "hung (SIGSTOP)"
    print(f"(b) failover, primary {how}, {threads} threads")
    by_primary = all(c.answered_by == "primary" for c in before)
    print(f"calls before the kill: {len(before)}, all by primary: {by_primary}")
    print(f"calls after the kill:  {len(after)} ({Counter(c.answered_by or 'failed' for c in after)})")
    if switched is None:
        print("traffic never moved entirely to the secondary")
    else:
        switch_ms = (switched.ended - killed_at) * 1000
        print(f"time from the kill to all traffic on the secondary: {switch_ms:.1f} ms")
    slow = max((c.ended - c.started for c in after), default=0.0)
    print(f"failed calls meanwhile: {len(failed)}; slowest call after the kill: {slow * 1000:.1f} ms")
    print(f"requests the secondary received after the kill: {secondary_served}")
    print(f"fallbacks by reason: {dict(fallback_reasons)}")
    for call in failed[:3]:
        print(f"  e.g. {call.error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="calls per path and round in (a)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4, help="threads streaming calls in (b)")
    parser.add_argument("--mode", choices=("kill", "stop"), default="kill")
    parser.add_argument("--after-s", type=float, default=5.0, help="how long (b) streams after the kill")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="call timeout (matters for --mode stop)")
    parser.add_argument("--skip", choices=("a", "b"), help="skip one part")
    args = parser.parse_args()

    from dspex_site.launch import postgres_problem

    problem = postgres_problem(DB_URL)
    if problem:
        sys.exit(problem)
    tmp = Path(tempfile.mkdtemp(prefix="dspex-bench-routing-"))
    redis_port = free_port()
    procs: dict[str, subprocess.Popen] = {
        "redis": subprocess.Popen(redis_server_command(redis_port, tmp), stdout=subprocess.DEVNULL)
    }
    try:
        urls: dict[str, str] = {}
        for name in ("overhead", "primary", "secondary"):
            procs[name], urls[name] = start_simlm()
        configure(
            f"redis://127.0.0.1:{redis_port}/0",
            urls["overhead"],
            urls["primary"],
            urls["secondary"],
            args.timeout_s,
        )
        setup_django()
        print(f"{psutil.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        if args.skip != "a":
            overhead(urls["overhead"], procs["redis"].pid, args.n, args.rounds)
        if args.skip != "b":
            failover(procs, urls, args.threads, args.mode, args.after_s)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
