"""Throughput of AMQP ingestion: messages on `dspex_executions` → `manage.py dspex_consume` →
simulated provider over HTTP → results on the `dspex_results` exchange.

Publishes `--n` messages to a RabbitMQ virtual host of its own (created and deleted with
rabbitmqctl on the machine's RabbitMQ, or `BENCH_AMQP_URL`'s server), starts one consumer
with `--concurrency` threads, and times the first message to the last result. Prints
executions/min and the consumer's peak RSS, per provider latency.

Usage: `python bench/ingestion.py [--n 2000] [--concurrency 16] [--latency-ms 200 0]` (needs
Postgres; uses the `dspex_bench` database, created and migrated if missing).

`--flood 100000 [--seconds 1800] [--prefetch N]`: back-pressure under a flood. Publishes that many
messages at once (publisher confirms, a window of 2,000 unconfirmed), then runs one consumer on
them and samples its RSS every second and RabbitMQ's ready/unacknowledged counts every 5 s;
prints a timeline, the peak RSS and its spread past the warm-up, the most messages in flight
(RabbitMQ's unacknowledged count, and the consumer's own count), and the throughput. Stops when
every result is in, or after `--seconds` (the rest stays queued: that is the point).
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://localhost:5432/dspex_bench")
os.environ["DATABASE_URL"] = DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "k" * 50)
os.environ.setdefault("DJANGO_HTTPS", "0")

from bench.common import free_port, server_env, setup_program, start, stop_all, wait_http  # noqa: E402

VHOST = f"dspex-bench-ingestion-{os.environ.get('DSPEX_TEST_SLOT', '0')}"


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=check)


def work_queue() -> Any:
    """`dspex_executions` with the consumer's own arguments (delivery limit, dead-lettering)."""
    from django.conf import settings
    from kombu import Queue

    from executions import ingestion

    arguments = ingestion.queue_arguments(settings.DSPEX_CONSUME_MAX_DELIVERIES)
    return Queue(ingestion.QUEUE, durable=True, queue_arguments=arguments)


def fresh_vhost() -> str:
    rabbitmqctl("delete_vhost", VHOST, check=False)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@localhost:5672/{VHOST}"


def flood(n: int, concurrency: int, prefetch: int, latency_ms: float, seconds: float, tmp: Path) -> None:
    from kombu import Connection, Consumer, Exchange, Queue

    from bench.amqpflood import Sampler, publish_confirmed

    setup_program("bench-ingest")  # django.setup() and the program
    from projects import keys
    from projects.access import default_project

    url = fresh_vhost()
    key = keys.issue(name="bench-flood", project=default_project(), service=True, scopes=["execute"]).key
    sim_port = free_port()
    env = server_env(
        f"http://127.0.0.1:{sim_port}/v1", "openai/sim-default", DSPEX_AMQP_URL=url, DSPEX_CONSUME_KEY=key
    )
    env["DSPEX_EMBEDDED"] = "0"
    py = sys.executable
    procs = {
        "simlm": start(
            [py, "manage.py", "simlm", "--port", str(sim_port), "--latency-ms", str(latency_ms)], env
        )
    }
    log = tmp / "consume.log"
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        results = Queue(
            "bench-results", Exchange("dspex_results", type="topic", durable=True), routing_key="#"
        )
        with Connection(url) as conn:
            results(conn.default_channel).declare()
            work_queue()(conn.default_channel).declare()
        stamp = time.time()
        bodies = (
            json.dumps(
                {
                    "program": "bench-ingest",
                    "input": {"question": f"q{i} {stamp}"},
                    "message_id": f"{stamp}-{i}",
                }
            ).encode()
            for i in range(n)
        )
        t0 = time.monotonic()
        published = publish_confirmed(url, "dspex_executions", bodies)
        publish_s = time.monotonic() - t0
        print(
            f"published {published:,} messages with confirms in {publish_s:.1f} s "
            f"({published / publish_s:,.0f}/s)",
            flush=True,
        )
        args = ["--concurrency", str(concurrency), "--prefetch", str(prefetch)]
        procs["consume"] = start([py, "manage.py", "dspex_consume", *args], env, log)
        got = {"n": 0}
        sampler = Sampler(procs["consume"].pid, VHOST, "dspex_executions", lambda: got["n"]).start()
        t0 = time.monotonic()
        statuses: dict[str, int] = {}

        def on_result(body: Any, message: Any) -> None:
            status = json.loads(message.body)["status"]
            statuses[status] = statuses.get(status, 0) + 1
            got["n"] += 1

        next_line = 0.0
        with Connection(url) as conn:
            channel = conn.default_channel
            with Consumer(channel, [results], callbacks=[on_result], no_ack=True, accept=["json"]) as c:
                c.qos(prefetch_count=500)
                while got["n"] < n and time.monotonic() - t0 < seconds:
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=1)
                    if time.monotonic() - t0 >= next_line and sampler.samples:
                        next_line += max(30.0, seconds / 20) if seconds < 1e9 else 60.0
                        last = sampler.samples[-1]
                        broker = [x for x in sampler.samples if x.ready is not None]
                        ready, unacked = (broker[-1].ready, broker[-1].unacked) if broker else (None, None)
                        print(
                            f"  t={last.t:6.0f} s  results {got['n']:7,}  "
                            f"consumer RSS {last.rss / 2**20:5.0f} MB  "
                            f"queue ready {ready}, unacked {unacked}",
                            flush=True,
                        )
        elapsed = time.monotonic() - t0
        sampler.stop()
        consumer = procs.pop("consume")
        consumer.terminate()  # SIGTERM: it finishes what it holds, then prints its counts
        consumer.wait(timeout=120)
        with Connection(url) as conn:  # exact (rabbitmqctl's counts are stats, up to 5 s old)
            left = work_queue()(conn.default_channel).queue_declare(passive=True).message_count
    finally:
        stop_all(procs)
        rabbitmqctl("delete_vhost", VHOST, check=False)
    tail = log.read_text() if log.exists() else ""
    own = tail.split("in flight at most ")[-1].split()[0] if "in flight at most " in tail else "?"
    warm = sampler.rss_after(min(1000, max(1, got["n"] // 10)))
    spread = (max(warm) - min(warm)) / 2**20 if warm else 0.0
    print(
        f"flood {n:,}, latency {latency_ms:g} ms, concurrency {concurrency}, prefetch {prefetch}: "
        f"{got['n']:,} results {statuses} in {elapsed:.0f} s = "
        f"{got['n'] / elapsed * 60:,.0f} executions/min; "
        f"consumer RSS peak {sampler.peak_rss / 2**20:.0f} MB, past the warm-up "
        f"{min(warm) / 2**20 if warm else 0:.0f}-{max(warm) / 2**20 if warm else 0:.0f} MB "
        f"(spread {spread:.1f} MB over {len(warm)} samples); in flight at most {sampler.max_unacked} "
        f"(RabbitMQ unacknowledged) / {own} (consumer); left queued {left:,}",
        flush=True,
    )


def run(n: int, concurrency: int, latency_ms: float, tmp: Path) -> dict:
    from kombu import Connection, Exchange, Queue

    setup_program("bench-ingest")  # django.setup() and the program
    from projects import keys
    from projects.access import default_project

    url = fresh_vhost()
    key = keys.issue(name="bench-consume", project=default_project(), service=True, scopes=["execute"]).key
    sim_port = free_port()
    env = server_env(
        f"http://127.0.0.1:{sim_port}/v1", "openai/sim-default", DSPEX_AMQP_URL=url, DSPEX_CONSUME_KEY=key
    )
    env["DSPEX_EMBEDDED"] = "0"
    py = sys.executable
    procs = {
        "simlm": start(
            [py, "manage.py", "simlm", "--port", str(sim_port), "--latency-ms", str(latency_ms)], env
        )
    }
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        with Connection(url) as conn:
            results = Queue(
                "bench-results", Exchange("dspex_results", type="topic", durable=True), routing_key="#"
            )
            results(conn.default_channel).declare()
            work_queue()(conn.default_channel).declare()
            producer = conn.Producer()
            for i in range(n):
                body = {"program": "bench-ingest", "input": {"question": f"q{i} {time.time()}"}}
                producer.publish(json.dumps(body).encode(), routing_key="dspex_executions", exchange="")
        log = tmp / "consume.log"
        t0 = time.monotonic()  # the clock runs from the consumer's start to the last result
        procs["consume"] = start(
            [py, "manage.py", "dspex_consume", "--concurrency", str(concurrency)], env, log
        )
        peak = [0]

        def sample() -> None:
            while procs["consume"].poll() is None:
                try:
                    peak[0] = max(peak[0], psutil.Process(procs["consume"].pid).memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        got, statuses = 0, {}
        with Connection(url) as conn:
            bound = results(conn.default_channel)
            deadline = time.monotonic() + 600
            while got < n and time.monotonic() < deadline:
                message = bound.get(no_ack=True)
                if message is None:
                    time.sleep(0.01)
                    continue
                status = json.loads(message.body)["status"]
                statuses[status] = statuses.get(status, 0) + 1
                got += 1
        elapsed = time.monotonic() - t0
        return {
            "latency_ms": latency_ms,
            "n": n,
            "results": got,
            "statuses": statuses,
            "elapsed_s": round(elapsed, 1),
            "per_min": round(got / elapsed * 60) if elapsed else 0,
            "peak_rss_mb": round(peak[0] / 2**20),
        }
    finally:
        stop_all(procs)
        rabbitmqctl("delete_vhost", VHOST, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[200.0, 0.0])
    parser.add_argument("--flood", type=int, default=0, help="publish this many at once; see the docstring")
    parser.add_argument(
        "--seconds", type=float, default=float("inf"), help="--flood: consume this long at most"
    )
    parser.add_argument(
        "--prefetch", type=int, default=0, help="--flood: the consumer's prefetch (0: concurrency)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.flood:
            prefetch = args.prefetch or args.concurrency
            flood(args.flood, args.concurrency, prefetch, args.latency_ms[0], args.seconds, Path(tmp))
            return
        for latency in args.latency_ms:
            row = run(args.n, args.concurrency, latency, Path(tmp))
            print(
                f"latency {row['latency_ms']:g} ms, concurrency {args.concurrency}: "
                f"{row['results']}/{row['n']} "
                f"results {row['statuses']} in {row['elapsed_s']} s = {row['per_min']} executions/min, "
                f"consumer peak RSS {row['peak_rss_mb']} MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
