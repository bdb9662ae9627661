"""Throughput of AMQP ingestion: messages on `dspex_executions` → `manage.py dspex_consume` →
simulated provider over HTTP → results on the `dspex_results` exchange.

Publishes `--n` messages to a RabbitMQ virtual host of its own (created and deleted with
rabbitmqctl on the machine's RabbitMQ, or `BENCH_AMQP_URL`'s server), starts one consumer
with `--concurrency` threads, and times the first message to the last result. Prints
executions/min and the consumer's peak RSS, per provider latency.

Usage: `python bench/ingestion.py [--n 2000] [--concurrency 16] [--latency-ms 200 0]` (needs
Postgres; uses the `dspex_bench` database, created and migrated if missing).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://localhost:5432/dspex_bench")
os.environ["DATABASE_URL"] = DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-" + "k" * 50)
os.environ.setdefault("DJANGO_HTTPS", "0")

from bench.common import free_port, server_env, setup_program, start, stop_all, wait_http  # noqa: E402

VHOST = "dspex-bench-ingestion"


def rabbitmqctl(*args: str, check: bool = True) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, check=check)


def run(n: int, concurrency: int, latency_ms: float, tmp: Path) -> dict:
    from kombu import Connection, Exchange, Queue

    setup_program("bench-ingest")  # django.setup() and the program
    from projects import keys
    from projects.access import default_project

    url = f"amqp://guest:guest@localhost:5672/{VHOST}"
    rabbitmqctl("delete_vhost", VHOST, check=False)
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
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
            Queue("dspex_executions", durable=True, queue_arguments={"x-queue-type": "quorum"})(
                conn.default_channel
            ).declare()
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
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
