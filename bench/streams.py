"""Streaming under load, and the latency figures of streamed executions and session turns.

Default mode (`hold`): for each serving model in `--servers` (`asgi`, `wsgi`: DSPEX_WEB_SERVER of
`dspex_site/gunicorn_conf.py`, both from the same config), one after the other on the same stack
(a private redis-server, `simlm --token-delay-ms 20`, gunicorn with `--web-workers` processes):

1. the p50/p99 of an ordinary cached `execute` (`wait=true`, an input answered before: the kept
   answer) with nothing else running ("idle");
2. `--streams` streamed executions opened at once (a child process with an asyncio client), each
   an uncached run whose answer is `--words` words, i.e. that many chunks 20 ms apart;
3. while they are all open: the same cached `execute` p50/p99 ("under streams"), the RSS of the
   serving processes (gunicorn and its workers) and their threads, against the idle figures;
4. how many streams ended with `done` (a succeeded, stored execution), their time to first token
   and the gap between tokens the clients saw (20 ms when the service keeps up).

`--first-token-ms N`: the provider waits N ms before its first chunk (a reasoning model's think
time), so all the streams are open at once before their tokens flow: what holding that many open
streams costs (memory per stream, ordinary requests meanwhile), apart from the CPU their tokens
take once they flow.

`--probe-when-flowing`: the probes start once 90% of the streams have their first token, so with
`--first-token-ms` they measure ordinary requests while all the streams' tokens flow at once.

`--latency`: time to first token p50/p99 of a streamed execution (`--n` sequential runs),
uncached and cached, against the provider's own time to the first chunk of the answer (the same
prompt streamed straight from simlm): DSPex's overhead; and the p50 of a session turn against a
plain `execute` (both `wait=true`, uncached).

Usage: `python bench/streams.py [--servers asgi,wsgi] [--streams 500] [--words 150]
[--web-workers 2] [--web-threads 8] [--probes 100]` or `python bench/streams.py --latency
[--n 200] [--server asgi]`. Needs Postgres (the `dspex_bench_streams` database, created and
migrated if missing); starts its own redis-server and simlm on free ports.
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://localhost:5432/dspex_bench_streams")
os.environ["DATABASE_URL"] = DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "k" * 50)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DJANGO_HTTPS", "0")

from bench.common import (  # noqa: E402
    free_port,
    percentile,
    redis_server_command,
    server_env,
    start,
    stop_all,
    wait_http,
)

QA = {"signature": "question -> answer"}
CHAT = {"signature": "question, history: History -> answer"}
WORDS = [
    "river",
    "mill",
    "bridge",
    "stone",
    "water",
    "north",
    "valley",
    "meadow",
    "forest",
    "harbour",
    "lantern",
    "orchard",
]


def question(i: int, words: int) -> str:
    """A unique question of about `words` words: simlm's answer repeats it, so the answer streams
    in about that many chunks."""
    body = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(max(words - 4, 1)))
    return f"Question {i} {time.time_ns()}: {body}?"


def setup() -> tuple[str, dict[str, str]]:
    """The bench database migrated, a superuser key, and the programs (name → id)."""
    from dspex_site.launch import postgres_problem

    problem = postgres_problem(DB_URL)
    if problem:
        sys.exit(problem)
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from programs.models import CognitiveProgram
    from projects import keys

    call_command("migrate", verbosity=0)
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_superuser": True})
    token = keys.issue(name="bench-streams", user=user)
    ids = {}
    for name, pipeline in (("bench-stream", QA), ("bench-chat", CHAT)):
        program, _ = CognitiveProgram.objects.update_or_create(
            name=name, defaults={"pipeline": pipeline, "status": "active"}
        )
        ids[name] = str(program.id)
    return token.key, ids


def start_servers(tmp: Path, server: str, args: argparse.Namespace) -> tuple[dict, int, int]:
    """redis-server, simlm (20 ms between tokens unless told) and the web (gunicorn_conf.py with
    DSPEX_WEB_SERVER=`server`); returns the processes, the web port and simlm's port."""
    redis_port, sim_port, web_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ["REDIS_URL"] = redis_url
    procs: dict[str, Any] = {}
    procs["redis"] = start(redis_server_command(redis_port, tmp), {})
    env = server_env(
        f"http://127.0.0.1:{sim_port}/v1",
        "openai/sim-default",
        REDIS_URL=redis_url,
        LOG_JSON="0",
        DSPEX_WEB_SERVER=server,
        DSPEX_HOST="127.0.0.1",
        PORT=str(web_port),
        WEB_CONCURRENCY=str(args.web_workers),
        WEB_THREADS=str(args.web_threads),
        DSPEX_DB_POOL_MAX=str(args.db_pool),
    )
    sim = [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(sim_port)]
    sim += ["--token-delay-ms", str(args.token_delay_ms)]
    procs["simlm"] = start(sim, env, tmp / "simlm.log")
    gunicorn = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "dspex_site/gunicorn_conf.py",
        "--access-logfile",
        "/dev/null",
    ]
    procs["web"] = start(gunicorn, env, tmp / f"web-{server}.log")
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health", timeout=90)
        wait_http(f"http://127.0.0.1:{web_port}/health/live", timeout=90)
    except BaseException:
        stop_all(procs)
        print((tmp / f"web-{server}.log").read_text()[-3000:])
        raise
    return procs, web_port, sim_port


def serving(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def rss_and_threads(pid: int) -> tuple[float, int]:
    """(RSS in MiB, threads) of gunicorn and its workers."""
    rss, threads = 0, 0
    for proc in serving(pid):
        try:
            rss += proc.memory_info().rss
            threads += proc.num_threads()
        except psutil.Error:
            pass
    return rss / 2**20, threads


def probe(
    session: requests.Session, url: str, headers: dict, body: dict, n: int, stop: Any = None
) -> list[float]:
    """`n` sequential cached `execute` requests (ms each); fewer when `stop()` says so."""
    out = []
    for _ in range(n):
        if stop is not None and stop():
            break
        started = time.perf_counter()
        response = session.post(url, json=body, headers=headers, timeout=60)
        out.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text[:300]
    return out


# --- the streams' client (a child process: its event loop is not this process's probes') ------


async def _one_stream(http: Any, url: str, headers: dict, body: dict, counts: Any, t0: float) -> dict:
    result: dict[str, Any] = {"tokens": 0, "done": False, "error": None, "ttft": None, "gaps": []}
    last = None
    try:
        async with http.post(url, json=body, headers=headers) as response:
            if response.status != 200:
                result["error"] = f"HTTP {response.status}: {(await response.text())[:200]}"
                return result
            counts[0] += 1
            event = ""
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    now = time.perf_counter()
                    if event == "token":
                        if result["ttft"] is None:
                            result["ttft"] = now - t0
                            counts[2] += 1
                        elif last is not None:
                            result["gaps"].append(now - last)
                        last = now
                        result["tokens"] += 1
                    elif event == "done":
                        result["done"] = json.loads(line[5:])["status"] == "succeeded"
                    elif event == "error":
                        result["error"] = line[5:].strip()[:200]
    except Exception as exc:  # a stream that broke is counted, not fatal
        result["error"] = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        counts[1] += 1
    return result


async def _streams(url: str, key: str, n: int, words: int, counts: Any) -> list[dict]:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    timeout = aiohttp.ClientTimeout(total=1800, sock_read=600)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        tasks = []
        for i in range(n):
            body = {"input": {"question": question(i, words)}, "stream": True}
            tasks.append(_one_stream(http, url, headers, body, counts, time.perf_counter()))
        return await asyncio.gather(*tasks)


def stream_client(url: str, key: str, n: int, words: int, counts: Any, out: Any) -> None:
    """The streams' client: `counts` = [opened (200 and headers), ended, with a first token]
    shared with the parent."""
    out.send(asyncio.run(_streams(url, key, n, words, counts)))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def hold(server: str, args: argparse.Namespace, key: str, ids: dict[str, str], tmp: Path) -> dict:
    say(f"{server}: starting")
    procs, port, sim_port = start_servers(tmp, server, args)
    say(f"{server}: serving")
    try:
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/api/v1/programs/{ids['bench-stream']}/execute/"
        headers = {"Authorization": f"Bearer {key}"}
        cached = {"input": {"question": "What is the capital of France?"}, "wait": True}
        session = requests.Session()
        probe(session, url, headers, cached, 30)  # warm: the answer is kept, the workers loaded
        if args.first_token_ms:  # from now on the provider thinks before its first chunk
            config = {"latency_ms": args.first_token_ms}
            sim_config = f"http://127.0.0.1:{sim_port}/_sim/config"
            requests.post(sim_config, json=config, timeout=5).raise_for_status()
        idle = probe(session, url, headers, cached, args.probes)
        web = procs["web"].pid
        rss_idle, threads_idle = rss_and_threads(web)
        say(f"{server}: idle p50 {statistics.median(idle):.1f} ms; opening {args.streams} streams")

        ctx = multiprocessing.get_context("fork")
        counts = ctx.Array("i", 3)  # streams opened, streams ended, streams with a first token
        receive, send = ctx.Pipe(duplex=False)
        client = ctx.Process(target=stream_client, args=(url, key, args.streams, args.words, counts, send))
        started = time.perf_counter()
        client.start()
        # Probes start once 90% of the streams are open (or after --ramp-s: a serving model that
        # cannot open them all at once) and go on while any stream is still open.
        while counts[0] < 0.9 * args.streams and time.perf_counter() - started < args.ramp_s:
            time.sleep(0.05)
        open_s = time.perf_counter() - started
        if args.probe_when_flowing:  # and once 90% of them have their first token: tokens flow
            while counts[2] < 0.9 * args.streams and counts[1] < args.streams:
                time.sleep(0.01)
            say(f"{server}: {counts[2]} streams have tokens, {counts[0] - counts[1]} open")
        opened_at_start = counts[0] - counts[1]
        rss_open, threads_open = rss_and_threads(web)
        say(f"{server}: {counts[0] - counts[1]} streams open after {open_s:.1f} s; probing")
        open_during: list[int] = []

        def stop() -> bool:  # each probe notes how many streams were open when it was sent
            open_during.append(counts[0] - counts[1])
            return counts[1] >= args.streams

        loaded = probe(session, url, headers, cached, args.probes, stop=stop)
        opened_max = max(open_during)
        rss_peak, threads_peak = rss_and_threads(web)
        probes_while_open = len(loaded)
        say(f"{server}: {probes_while_open} probes while open; waiting for the streams to end")
        if not receive.poll(args.timeout_s):
            client.kill()
            raise SystemExit(f"{server}: the streams had not all ended after {args.timeout_s} s")
        results = receive.recv()
        client.join()
        total_s = time.perf_counter() - started
    finally:
        stop_all(procs)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    errors = [r["error"] for r in results if r["error"]]
    rss_with = max(rss_open, rss_peak)
    return {
        "server": server,
        "idle_p50": statistics.median(idle),
        "idle_p99": percentile(idle, 0.99),
        "loaded_p50": statistics.median(loaded) if loaded else float("nan"),
        "loaded_p99": percentile(loaded, 0.99) if loaded else float("nan"),
        "probes_while_open": probes_while_open,
        "open_at_probe_start": opened_at_start,
        "open_at_probe_end": opened_max,
        "open_median": statistics.median(open_during),
        "completed": sum(1 for r in results if r["done"]),
        "streams": len(results),
        "errors": errors[:3],
        "error_count": len(errors),
        "open_s": open_s,
        "total_s": total_s,
        "ttft_p50": percentile(ttfts, 0.5) if ttfts else float("nan"),
        "ttft_p99": percentile(ttfts, 0.99) if ttfts else float("nan"),
        "gap_p50_ms": percentile(gaps, 0.5) * 1000 if gaps else float("nan"),
        "tokens_per_stream": statistics.mean(r["tokens"] for r in results),
        "rss_idle": rss_idle,
        "rss_with": rss_with,
        # RSS growth over the idle figure, per stream open at that moment (when 90% were open).
        "kib_per_stream": (rss_open - rss_idle) * 1024 / max(opened_at_start, 1),
        "threads_idle": threads_idle,
        "threads_with": max(threads_open, threads_peak),
    }


def print_hold(rows: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{args.streams} streams, {args.words}-word answers, {args.token_delay_ms:g} ms between tokens "
        f"after {args.first_token_ms:g} ms to the first, "
        f"{args.web_workers} web processes (wsgi: {args.web_threads} threads each); "
        f"load {os.getloadavg()[0]:.2f} (1 min) at the end"
    )
    for r in rows:
        print(f"[{r['server']}]")
        print(f"  cached execute idle:          p50 {r['idle_p50']:.1f} ms, p99 {r['idle_p99']:.1f} ms")
        print(
            f"  cached execute under streams: p50 {r['loaded_p50']:.1f} ms, p99 {r['loaded_p99']:.1f} ms "
            f"({r['probes_while_open']} probes, "
            f"streams open when sent: median {r['open_median']:.0f}, max {r['open_at_probe_end']}); "
            f"p50 ratio {r['loaded_p50'] / r['idle_p50']:.2f}"
        )
        print(
            f"  streams: {r['completed']}/{r['streams']} done, {r['error_count']} errors; 90% open after "
            f"{r['open_s']:.1f} s, all ended after {r['total_s']:.1f} s"
        )
        print(
            f"  per stream: TTFT p50 {r['ttft_p50']:.2f} s, p99 {r['ttft_p99']:.2f} s; token gap p50 "
            f"{r['gap_p50_ms']:.1f} ms; {r['tokens_per_stream']:.0f} tokens"
        )
        print(
            f"  serving processes: RSS {r['rss_idle']:.0f} → {r['rss_with']:.0f} MiB "
            f"({r['kib_per_stream']:.0f} KiB per stream), threads {r['threads_idle']} → {r['threads_with']}"
        )
        if r["error_count"]:
            print(f"  errors, e.g. {r['errors']}")


# --- latency figures --------------------------------------------------------------------------


def sse_first_token(response: requests.Response, started: float) -> tuple[float | None, str]:
    """(seconds to the first `token` event, the last event's name) of a DSPex stream."""
    first, event, last = None, "", ""
    for raw in response.iter_lines(chunk_size=1, decode_unicode=True):
        if raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            last = event
            if event == "token" and first is None:
                first = time.perf_counter() - started
    return first, last


def provider_first_answer_chunk(sim_port: int, text: str) -> float:
    """Seconds until simlm's own stream of the same prompt (DSPy's chat adapter's messages for
    `question -> answer`) has sent the first word of the answer field: the floor of DSPex's
    time to first token (DSPy's listener can only start once the field's marker has passed)."""
    import dspy

    messages = dspy.ChatAdapter().format(
        dspy.Signature("question -> answer"), demos=[], inputs={"question": text}
    )
    body = {"model": "sim-default", "messages": messages, "stream": True}
    started = time.perf_counter()
    seen = ""
    with requests.post(
        f"http://127.0.0.1:{sim_port}/v1/chat/completions", json=body, stream=True, timeout=60
    ) as response:
        for raw in response.iter_lines(chunk_size=1, decode_unicode=True):
            if not raw.startswith("data:") or raw.strip() == "data: [DONE]":
                continue
            delta = (json.loads(raw[5:])["choices"] or [{}])[0].get("delta", {})
            seen += delta.get("content") or ""
            marker = seen.find("[[ ## answer ## ]]")
            if marker >= 0 and seen[marker + len("[[ ## answer ## ]]") :].strip():
                return time.perf_counter() - started
    raise RuntimeError("the provider's stream held no answer field")


def latency(args: argparse.Namespace, key: str, ids: dict[str, str], tmp: Path) -> None:
    procs, port, sim_port = start_servers(tmp, args.server, args)
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{base}/api/v1/programs/{ids['bench-stream']}/execute/"
        http = requests.Session()
        for i in range(10):  # warm up both paths
            http.post(
                url, json={"input": {"question": f"warm {i}?"}, "wait": True}, headers=headers, timeout=60
            )
            provider_first_answer_chunk(sim_port, f"warm {i}?")
        rows = {}
        for mode in ("uncached", "cached"):
            ttft, provider = [], []
            for i in range(args.n):
                text = (
                    f"What is the name of river {i} {time.time_ns()}?"
                    if mode == "uncached"
                    else "Which river?"
                )
                body = {"input": {"question": text}, "stream": True}
                started = time.perf_counter()
                with http.post(url, json=body, headers=headers, stream=True, timeout=60) as response:
                    first, last = sse_first_token(response, started)
                assert first is not None and last == "done", (first, last)
                ttft.append(first * 1000)
                if mode == "uncached":
                    provider.append(provider_first_answer_chunk(sim_port, text) * 1000)
            rows[mode] = (ttft, provider)
        # A session turn against a plain execute: both wait=true, uncached, the chat program.
        chat = ids["bench-chat"]
        plain, turns = [], []
        created = http.post(f"{base}/api/v1/sessions/", json={"program": chat}, headers=headers, timeout=30)
        assert created.status_code == 201, created.text
        session_id = created.json()["id"]
        for i in range(args.n):
            for out, path in (
                (plain, f"/api/v1/programs/{chat}/execute/"),
                (turns, f"/api/v1/sessions/{session_id}/turns/"),
            ):
                body = {"input": {"question": f"Question {i} {time.time_ns()}?"}, "wait": True}
                if out is plain:  # what a session fills in, given as empty
                    body["input"]["history"] = {"messages": []}
                started = time.perf_counter()
                response = http.post(base + path, json=body, headers=headers, timeout=60)
                out.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, response.text[:300]
            if i % 40 == 39:  # a session's history stays at most DSPEX_SESSION_HISTORY_TURNS long
                http.delete(f"{base}/api/v1/sessions/{session_id}/", headers=headers, timeout=30)
                session_id = http.post(
                    f"{base}/api/v1/sessions/", json={"program": chat}, headers=headers, timeout=30
                ).json()["id"]
    finally:
        stop_all(procs)
    print(
        f"\nlatency ({args.server}, {args.n} sequential requests each, {args.token_delay_ms:g} ms between "
        f"tokens, load {os.getloadavg()[0]:.2f})"
    )
    ttft, provider = rows["uncached"]
    overhead = [a - b for a, b in zip(ttft, provider, strict=True)]
    print(
        f"time to first token, uncached: p50 {statistics.median(ttft):.1f} ms, "
        f"p99 {percentile(ttft, 0.99):.1f} ms; "
        f"provider's own first answer chunk p50 {statistics.median(provider):.1f} ms, "
        f"p99 {percentile(provider, 0.99):.1f} ms; DSPex overhead p50 {statistics.median(overhead):.1f} ms, "
        f"p99 {percentile(overhead, 0.99):.1f} ms"
    )
    cached = rows["cached"][0]
    print(
        f"time to first token, cached (kept answer): p50 {statistics.median(cached):.1f} ms, "
        f"p99 {percentile(cached, 0.99):.1f} ms"
    )
    print(
        f"session turn p50 {statistics.median(turns):.1f} ms vs plain execute p50 "
        f"{statistics.median(plain):.1f} ms: "
        f"overhead {statistics.median(turns) - statistics.median(plain):.1f} ms "
        f"(p99 {percentile(turns, 0.99):.1f} vs {percentile(plain, 0.99):.1f} ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="asgi,wsgi", help="serving models to compare, in this order")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument(
        "--words", type=int, default=150, help="answer length of each stream, in words (chunks)"
    )
    parser.add_argument("--token-delay-ms", type=float, default=20)
    parser.add_argument(
        "--first-token-ms",
        type=float,
        default=0,
        help="the provider's wait before its first chunk (a reasoning model's think time): streams "
        "are then all open at once before their tokens flow",
    )
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=8, help="wsgi (gthread) threads per process")
    parser.add_argument("--db-pool", type=int, default=20, help="DSPEX_DB_POOL_MAX of the web processes")
    parser.add_argument("--probes", type=int, default=100, help="cached execute requests per measurement")
    parser.add_argument(
        "--ramp-s", type=float, default=60, help="longest wait for 90%% of the streams to open"
    )
    parser.add_argument(
        "--probe-when-flowing",
        action="store_true",
        help="probe once 90%% of the streams have their first token (with --first-token-ms: while "
        "all of them stream at once) rather than once 90%% are open",
    )
    parser.add_argument("--log-dir", help="keep the servers' logs in this directory")
    parser.add_argument("--timeout-s", type=float, default=600, help="how long the streams may take in all")
    parser.add_argument("--latency", action="store_true", help="time to first token and session turn figures")
    parser.add_argument("--server", default="asgi", help="--latency: the serving model")
    parser.add_argument("--n", type=int, default=200, help="--latency: requests per figure")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))  # the servers are stopped on the way out
    key, ids = setup()
    with tempfile.TemporaryDirectory() as tmp:
        if args.log_dir:  # the servers' logs kept there
            tmp = args.log_dir
            Path(tmp).mkdir(parents=True, exist_ok=True)
        if args.latency:
            latency(args, key, ids, Path(tmp))
            return
        rows = [hold(server, args, key, ids, Path(tmp)) for server in args.servers.split(",")]
    print_hold(rows, args)


if __name__ == "__main__":
    main()
