"""DSPex beside LiteLLM proxy and DSPy called directly, against the same simulated provider, in one run.

The peer is what a user would put in front of DSPy instead of DSPex: LiteLLM proxy, installed by
`make peers-env` into `.venv-peers/` (never into the product's `.venv`). This benchmark starts,
on loopback only:

- one `manage.py simlm` (0 ms latency) that every side calls;
- one private `redis-server`: DSPex's LLM cache (db 0) and LiteLLM's cache (db 8);
- DSPex: gunicorn (`--workers`, gthread x `--threads`), production settings, the `dspex_peers`
  database (created and migrated if missing; `PEERS_DATABASE_URL` moves it), program
  `question -> answer` on `openai/<--sim-model>`;
- LiteLLM proxy (uvicorn, `--workers`), offline (local cost map, telemetry off, no database),
  one model `sim-qa` → `openai/<--sim-model>` at simlm, master key, Redis cache.

Both sides log warnings/errors only and write no access log; DSPex authenticates a DRF token
(a table) and throttles per token at a rate it never reaches (`--throttle`), LiteLLM checks its
master key; DSPex stores every execution with its trace in Postgres, LiteLLM stores nothing.

Figures, each the median of `--runs` rounds (the sides alternate who goes first):

- latency at one client, p50/p99 over `--n` requests: uncached (a unique input per request;
  DSPex `"cache": false`, LiteLLM `"cache": {"no-cache": true, "no-store": true}`), and fully
  cached (the same input every time, warmed first); DSPy direct (in-process `dspy.Predict`
  against simlm, cache off) is the floor;
- requests/s at saturation: wrk (Debian's `wrk`), `--connections` connections for `--seconds`,
  fully cached: DSPex `POST /api/v1/programs/{id}/execute/` `wait=true`, LiteLLM
  `POST /chat/completions` with the messages DSPex's program sent (read from its trace);
- CPU per request: user+sys of each server's process tree plus the processes serving it
  (DSPex: Postgres backends of its database and the Redis server; LiteLLM: the Redis server);
  for DSPy direct, this process.

Usage: `python bench/peers.py [--n 300] [--seconds 10] [--runs 3] [--workers 1] [--json]`
(needs Postgres, `redis-server`, `wrk` and `make peers-env`). `--json` also writes the figures
to `bench/results/peers-<time>.json`. Every process it starts is stopped at the end, on errors
and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("PEERS_DATABASE_URL", "postgres://localhost:5432/dspex_peers")

from bench.common import (  # noqa: E402
    bench_direct,
    free_port,
    percentile,
    pg_backends,
    server_env,
    setup_program,
    start_web,
    tree_cpu_s,
    wait_http,
)

PEERS_VENV = ROOT / ".venv-peers"
LITELLM = PEERS_VENV / "bin" / "litellm"
WRK_SCRIPT = ROOT / "bench" / "wrk_post.lua"
RESULTS = ROOT / "bench" / "results"
PROXY_MODEL = "sim-qa"
# LiteLLM's cache gets a database of its own on the benchmark's Redis; DSPex keeps db 0.
LITELLM_REDIS_DB = 8
# Loopback-only credentials of processes this benchmark starts and stops; never a real secret.
MASTER_KEY = "sk-bench-peers-master"
SIM_KEY = "sk-bench"
CACHED_QUESTION = "What does a fully cached execution cost?"
# The proxy's per-request cache controls: the uncached figures bypass its cache both ways,
# as DSPex's `"cache": false` does.
NO_CACHE = {"no-cache": True, "no-store": True}


# -- what each side is sent ----------------------------------------------------------------------


def litellm_config(sim_base_url: str, sim_model: str, redis_port: int | None = None) -> dict[str, Any]:
    """The proxy's config: one model at simlm, the master key, no retries, the Redis cache (if
    `redis_port`) on the benchmark's Redis, database `LITELLM_REDIS_DB`. No database_url: the
    proxy runs without a database (no spend logs, keys or teams to look up)."""
    litellm_settings: dict[str, Any] = {}
    if redis_port is not None:
        litellm_settings = {
            "cache": True,
            "cache_params": {
                "type": "redis",
                "host": "127.0.0.1",
                "port": redis_port,
                "db": LITELLM_REDIS_DB,
            },
        }
    return {
        "model_list": [
            {
                "model_name": PROXY_MODEL,
                "litellm_params": {
                    "model": f"openai/{sim_model}",
                    "api_base": sim_base_url,
                    "api_key": SIM_KEY,
                },
            }
        ],
        "litellm_settings": litellm_settings,
        # DSPex makes exactly one provider request per LM call (num_retries=0): so does the peer.
        "router_settings": {"num_retries": 0},
        "general_settings": {"master_key": MASTER_KEY},
    }


def litellm_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy's environment: only what a process needs to run (so no DATABASE_URL, REDIS_URL,
    provider keys or PYTHONPATH of ours leak in), offline, telemetry off, errors-only logging."""
    base = os.environ if base is None else base
    env = {key: base[key] for key in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR") if key in base}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY_DISABLED="True",
        LITELLM_LOG="ERROR",
        # PRODUCTION: the proxy does not read a .env file from its working directory.
        LITELLM_MODE="PRODUCTION",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def dspex_body(question: str, cache: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"input": {"question": question}, "wait": True}
    if not cache:
        body["cache"] = False
    return body


def proxy_body(messages: list[dict[str, Any]], question: str, cache: bool = True) -> dict[str, Any]:
    """The chat request DSPex's program sends for `question`: its messages for `CACHED_QUESTION`
    with the question swapped in (the question appears in them exactly once)."""
    text = json.dumps(messages)
    quoted = json.dumps(CACHED_QUESTION)[1:-1]
    if text.count(quoted) != 1:
        raise ValueError(f"the program's messages hold the question {text.count(quoted)} times, not once")
    body: dict[str, Any] = {
        "model": PROXY_MODEL,
        "messages": json.loads(text.replace(quoted, json.dumps(question)[1:-1])),
    }
    if not cache:
        body["cache"] = NO_CACHE
    return body


def program_messages(execution: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages of the one LM call in an execution's trace (what DSPex sent the provider)."""
    calls = [entry for entry in execution.get("trace") or [] if entry.get("kind") == "lm"]
    if len(calls) != 1 or not isinstance(calls[0].get("messages"), list):
        raise RuntimeError(f"expected one LM call with its messages in the trace, got {len(calls)}")
    return calls[0]["messages"]


# -- processes -----------------------------------------------------------------------------------


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """Every process started goes in the list; all of them (and their children) are stopped on
    the way out, whatever the way out is (SIGTERM becomes SystemExit so that is one too)."""
    started: list[subprocess.Popen] = []
    # SIGINT too: a shell starting this in the background hands it SIGINT ignored.
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
    }
    try:
        yield started
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        family: list[psutil.Process] = []
        for proc in started:
            with contextlib.suppress(psutil.Error):
                family += psutil.Process(proc.pid).children(recursive=True)
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()


def start_simlm(started: list[subprocess.Popen]) -> str:
    port = free_port()
    command = [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(port)]
    started.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_http(f"http://127.0.0.1:{port}/health", timeout=90)
    return f"http://127.0.0.1:{port}"


def start_redis(started: list[subprocess.Popen], tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_server = subprocess.Popen(
        [*command, "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started.append(redis_server)
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return redis_server, port
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.1)


def start_litellm(
    started: list[subprocess.Popen], tmp: Path, config: dict[str, Any], workers: int
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    # JSON is YAML: the product's environment needs no YAML writer for the proxy's config.
    (tmp / "litellm.yaml").write_text(json.dumps(config, indent=2))
    command = [
        str(LITELLM),
        "--config",
        str(tmp / "litellm.yaml"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = (tmp / "litellm.log").open("w")
    proxy = subprocess.Popen(
        [*command, "--num_workers", str(workers)], cwd=tmp, env=litellm_env(), stdout=log, stderr=log
    )
    started.append(proxy)
    try:
        # Importing the proxy takes 10-40 s on a loaded 2-core machine.
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=240)
    except RuntimeError:
        sys.exit("LiteLLM proxy did not start:\n" + (tmp / "litellm.log").read_text()[-3000:])
    return proxy, port


# -- measuring -----------------------------------------------------------------------------------

CpuParts = dict[str, Callable[[], dict[int, float]]]


def cpu_snapshot(parts: CpuParts) -> dict[str, dict[int, float]]:
    return {name: read() for name, read in parts.items()}


def cpu_spent_ms(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], n: int) -> dict:
    """Milliseconds of CPU per request by part (a process that appeared meanwhile counts whole)."""
    spent = {
        name: sum(cpu - before[name].get(pid, 0.0) for pid, cpu in after[name].items()) * 1000 / max(n, 1)
        for name in after
    }
    return {"total": sum(spent.values()), **spent}


def sim_requests(sim_url: str) -> int:
    return requests.get(f"{sim_url}/_sim/stats", timeout=5).json()["requests"]


def sequential(call: Callable[[int], None], n: int, parts: CpuParts) -> dict[str, Any]:
    """`n` calls one after the other: latency percentiles and CPU per call."""
    latencies = []
    before = cpu_snapshot(parts)
    for i in range(n):
        started = time.perf_counter()
        call(i)
        latencies.append((time.perf_counter() - started) * 1000)
    cpu = cpu_spent_ms(before, cpu_snapshot(parts), n)
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 0.99), "cpu_ms": cpu}


def wrk(
    url: str, body: dict, authorization: str, args: argparse.Namespace, parts: CpuParts, tmp: Path
) -> dict:
    """Requests/s of `body` POSTed by wrk over `--connections` connections for `--seconds`."""
    (tmp / "wrk-body.json").write_text(json.dumps(body))
    env = {**os.environ, "WRK_BODY_FILE": str(tmp / "wrk-body.json"), "WRK_AUTHORIZATION": authorization}
    command = ["wrk", "-t", str(args.wrk_threads), "-c", str(args.connections), "-d", f"{args.seconds}s"]
    command += ["--timeout", "10s", "-s", str(WRK_SCRIPT), url]
    before = cpu_snapshot(parts)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.seconds + 60)
    after = cpu_snapshot(parts)
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    if summary["not_ok"] or summary["socket_errors"]:
        raise RuntimeError(f"wrk against {url}: answers other than 200 or socket errors: {summary}")
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "cpu_ms": cpu_spent_ms(before, after, summary["requests"]),
    }


class Side:
    """One server under test: how to call it uncached and cached, and which processes it costs."""

    def __init__(self, name: str, url: str, authorization: str, parts: CpuParts) -> None:
        self.name, self.url, self.parts = name, url, parts
        self.session = requests.Session()
        self.session.headers["Authorization"] = self.authorization = authorization

    def post(self, body: dict) -> dict:
        response = self.session.post(self.url, json=body, timeout=30)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def body(self, question: str, cache: bool) -> dict:
        raise NotImplementedError


class DSPexSide(Side):
    def body(self, question: str, cache: bool) -> dict:
        return dspex_body(question, cache)


class LiteLLMSide(Side):
    def __init__(self, name: str, url: str, authorization: str, parts: CpuParts) -> None:
        super().__init__(name, url, authorization, parts)
        self.messages: list[dict[str, Any]] = []  # DSPex's, once its first execution has run

    def body(self, question: str, cache: bool) -> dict:
        return proxy_body(self.messages, question, cache)


def one_round(
    round_no: int, sides: list[Side], args: argparse.Namespace, sim_url: str, nonce: str, tmp: Path
) -> dict:
    result: dict[str, dict] = {side.name: {} for side in sides}
    if round_no % 2:
        sides = sides[::-1]  # who goes first alternates, so drift on a shared machine spreads evenly
    question = f"Peers {nonce} round {round_no}: what is question {{i}}?"
    result["direct"] = {"uncached": direct_figures(sim_url, args, question)}
    for side in sides:

        def uncached(i: int, side: Side = side) -> None:
            side.post(side.body(question.format(i=i), cache=False))

        asked = sim_requests(sim_url)
        result[side.name]["uncached"] = sequential(uncached, args.n, side.parts)
        if sim_requests(sim_url) - asked != args.n:
            raise RuntimeError(f"{side.name}: uncached requests did not each reach the provider once")
    asked = sim_requests(sim_url)
    for side in sides:
        cached_body = side.body(CACHED_QUESTION, cache=True)
        result[side.name]["cached"] = sequential(
            lambda i, s=side, b=cached_body: s.post(b), args.n, side.parts
        )
        result[side.name]["saturation"] = wrk(
            side.url, cached_body, side.authorization, args, side.parts, tmp
        )
    if sim_requests(sim_url) != asked:
        raise RuntimeError("a 'cached' request reached the provider: the cached figures would be wrong")
    return result


def direct_figures(sim_url: str, args: argparse.Namespace, question: str) -> dict:
    direct = bench_direct(f"{sim_url}/v1", args.n, f"openai/{args.sim_model}", question=question)
    lat = direct["latencies"]
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": percentile(lat, 0.99),
        "cpu_ms": {"total": direct["cpu_ms"], "this process": direct["cpu_ms"]},
    }


# -- report --------------------------------------------------------------------------------------

ROWS = (
    ("uncached p50 ms, 1 client", "uncached", "p50_ms"),
    ("uncached p99 ms, 1 client", "uncached", "p99_ms"),
    ("uncached CPU ms/request", "uncached", "cpu_ms"),
    ("cached p50 ms, 1 client", "cached", "p50_ms"),
    ("cached p99 ms, 1 client", "cached", "p99_ms"),
    ("cached CPU ms/request", "cached", "cpu_ms"),
    ("cached requests/s, wrk", "saturation", "rps"),
    ("cached CPU ms/request, wrk", "saturation", "cpu_ms"),
)


def figure(result: dict, side: str, phase: str, key: str) -> float | None:
    value = result.get(side, {}).get(phase, {}).get(key)
    return value["total"] if isinstance(value, dict) else value


def median_of(rounds: list[dict], side: str, phase: str, key: str) -> float | None:
    values = [v for v in (figure(r, side, phase, key) for r in rounds) if v is not None]
    return statistics.median(values) if values else None


def split_median(rounds: list[dict], side: str, phase: str) -> dict[str, float]:
    parts = rounds[0][side][phase]["cpu_ms"]
    return {name: statistics.median(r[side][phase]["cpu_ms"][name] for r in rounds) for name in parts}


def report(rounds: list[dict], args: argparse.Namespace, setup: str) -> dict:
    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:,.2f}" if value < 100 else f"{value:,.0f}"

    medians: dict[str, dict[str, float | None]] = {}
    print(f"\n{setup}")
    print(f"figures: median of {len(rounds)} round(s); n={args.n} per latency figure, wrk {args.seconds:g} s")
    print(f"{'':<30}{'DSPex':>10}{'LiteLLM':>10}{'DSPy direct':>13}{'DSPex/LiteLLM':>15}")
    for label, phase, key in ROWS:
        row = {side: median_of(rounds, side, phase, key) for side in ("dspex", "litellm", "direct")}
        medians[label] = row
        ratio = row["dspex"] / row["litellm"] if row["dspex"] and row["litellm"] else None
        ratio_cell = "—" if ratio is None else f"x{ratio:.2f}"
        print(
            f"{label:<30}{cell(row['dspex']):>10}{cell(row['litellm']):>10}{cell(row['direct']):>13}{ratio_cell:>15}"
        )
    floor = medians["uncached p50 ms, 1 client"]["direct"] or 0.0
    overhead = {
        side: (medians["uncached p50 ms, 1 client"][side] or 0.0) - floor for side in ("dspex", "litellm")
    }
    print("(ratio below 1: DSPex takes less time or CPU; above 1 on requests/s: DSPex serves more)")
    over = f"DSPex +{overhead['dspex']:.2f} ms, LiteLLM +{overhead['litellm']:.2f} ms"
    print(f"uncached p50 over DSPy direct: {over}")
    for side in ("dspex", "litellm"):
        for phase in ("uncached", "cached", "saturation"):
            split = split_median(rounds, side, phase)
            text = ", ".join(f"{name} {ms:.2f}" for name, ms in split.items() if name != "total")
            print(f"  CPU ms/request {side} {phase}, by process (median of each): {text}")
    return {"medians": medians, "uncached_p50_over_direct_ms": overhead}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests per latency figure (one client)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--runs", type=int, default=3, help="rounds; every figure is their median")
    parser.add_argument("--workers", type=int, default=1, help="web worker processes, each side")
    parser.add_argument("--threads", type=int, default=4, help="threads per DSPex gunicorn worker (gthread)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--sim-model", default="gpt-4o-mini", help="model name sent to simlm (priced by all sides)"
    )
    parser.add_argument(
        "--throttle",
        default="1000000/min",
        help="DSPex per-token throttle: on, at a rate the run never reaches",
    )
    parser.add_argument("--json", action="store_true", help="also write the figures to bench/results/")
    args = parser.parse_args()
    # Set here, not at import: the tests import this module and must keep their own environment.
    os.environ["DATABASE_URL"] = DB_URL
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
    os.environ.setdefault("DJANGO_DEBUG", "1")  # this process only; the servers run production settings
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: `apt-get install -y wrk` (Debian's package), then run this again")
    if not LITELLM.exists():
        sys.exit(f"LiteLLM proxy is not installed: run `make peers-env` (it creates {PEERS_VENV.name}/)")
    if not shutil.which("redis-server"):
        sys.exit("redis-server is not installed: `apt-get install -y redis-server`")
    from dspex_site.launch import postgres_problem

    problem = postgres_problem(DB_URL)
    if problem:
        sys.exit(problem)

    token, program_id = setup_program("bench-peers-qa")
    from django.db import connection

    tmp = Path(tempfile.mkdtemp(prefix="dspex-peers-"))
    try:
        with processes() as started:
            rounds, setup = run(args, started, tmp, token, program_id, connection)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = report(rounds, args, setup)
    if args.json:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
        payload = {"args": vars(args), "setup": setup, **figures, "rounds": rounds}
        out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {out.relative_to(ROOT)}")


def run(
    args: argparse.Namespace,
    started: list[subprocess.Popen],
    tmp: Path,
    token: str,
    program_id: str,
    connection: Any,
) -> tuple[list[dict], str]:
    sim_url = start_simlm(started)
    redis_server, redis_port = start_redis(started, tmp)
    proxy, proxy_port = start_litellm(
        started, tmp, litellm_config(f"{sim_url}/v1", args.sim_model, redis_port), args.workers
    )
    env = server_env(
        f"{sim_url}/v1",
        f"openai/{args.sim_model}",
        DATABASE_URL=DB_URL,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        DSPEX_API_THROTTLE_RATE=args.throttle,
    )
    web, web_port = start_web(env, workers=args.workers, threads=args.threads)
    started.append(web)

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_database()")
        own_backend, dbname = cursor.fetchone()

    def postgres() -> dict[int, float]:
        backends = pg_backends(dbname)
        backends.pop(own_backend, None)  # this benchmark's own queries are not DSPex's
        return backends

    def tree(proc: subprocess.Popen) -> Callable[[], dict[int, float]]:
        return lambda: {proc.pid: tree_cpu_s(proc.pid)}

    redis_cpu = tree(redis_server)
    dspex = DSPexSide(
        "dspex",
        f"http://127.0.0.1:{web_port}/api/v1/programs/{program_id}/execute/",
        f"Token {token}",
        {"web": tree(web), "postgres": postgres, "redis": redis_cpu},
    )
    litellm = LiteLLMSide(
        "litellm",
        f"http://127.0.0.1:{proxy_port}/chat/completions",
        f"Bearer {MASTER_KEY}",
        {"proxy": tree(proxy), "redis": redis_cpu},
    )
    # Warm-up: the one real LM call of the cached input on each side, then both paths.
    execution = dspex.post(dspex_body(CACHED_QUESTION))
    litellm.messages = program_messages(execution)
    nonce = f"{time.time_ns():x}"
    for side in (dspex, litellm):
        for i in range(30):
            side.post(side.body(f"Peers {nonce} warm-up {i}?", cache=False))
            side.post(side.body(CACHED_QUESTION, cache=True))
    metrics = dspex.post(dspex_body(CACHED_QUESTION))["metrics"]
    if not metrics.get("lm_calls") == metrics.get("cache_hits") == 1:
        raise RuntimeError(f"DSPex's cached input is not a cache hit: {metrics}")
    proxy_version = subprocess.run(
        [
            str(PEERS_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load = os.getloadavg()[0]
    rounds = [one_round(r, [dspex, litellm], args, sim_url, nonce, tmp) for r in range(args.runs)]
    cores, after = psutil.cpu_count(), os.getloadavg()[0]
    setup = "\n".join(
        [
            f"machine: {cores} cores, load average {load:.1f} before / {after:.1f} after; simlm 0 ms, "
            f"model openai/{args.sim_model}, one-step Predict `question -> answer`",
            f"DSPex: gunicorn {args.workers} worker(s) gthread x {args.threads}, production settings, "
            f"token auth, throttle {args.throttle}, LLM cache in Redis db 0, LOG_LEVEL=WARNING, "
            f"no access log, every execution stored with its trace (Postgres {dbname})",
            f"LiteLLM proxy {proxy_version}: uvicorn {args.workers} worker(s), master key, no database, "
            f"cache in Redis db {LITELLM_REDIS_DB} (same redis-server), LITELLM_LOG=ERROR, no access log, "
            "telemetry off",
            f"wrk {args.connections} connections, {args.wrk_threads} threads; uncached = a unique input "
            "per request with each side's cache bypassed; DSPy direct = dspy.Predict here, cache off",
        ]
    )
    return rounds, setup


if __name__ == "__main__":
    main()
