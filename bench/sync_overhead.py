"""What DSPex adds to a synchronous execution, compared with calling DSPy directly.

Both sides run the same one-step `Predict` program against the same `manage.py simlm` server
(0 ms latency) over DSPy's real HTTP path, with the LLM cache off:

- direct: `dspy.Predict("question -> answer")` in a loop in this process;
- DSPex:  `POST /api/v1/programs/{id}/execute/` with `wait=true` to gunicorn (1 worker),
          which validates, writes the row, runs the program, stores the trace and answers.

Prints median and p99 latency and CPU milliseconds per execution for each (for DSPex the CPU
of the gunicorn worker plus the Postgres backends serving it; for direct, this process), and
the ratios. Usage: `python bench/sync_overhead.py [--n 500]` (needs Postgres; uses the `dspex`
database, or DATABASE_URL).
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import (  # noqa: E402
    bench_direct,
    free_port,
    percentile,
    postgres_cpu_s,
    server_env,
    start_web,
    tree_cpu_s,
    wait_http,
)


def setup_django_objects() -> tuple[str, str]:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from programs.models import CognitiveProgram
    from projects import keys

    call_command("migrate", verbosity=0)  # the database itself is created by main()
    user, _ = get_user_model().objects.get_or_create(username="bench", defaults={"is_superuser": True})
    token = keys.issue(name="bench", user=user)  # a fresh key per run: only its digest is stored
    program, _ = CognitiveProgram.objects.update_or_create(
        name="bench-sync-qa", defaults={"pipeline": {"signature": "question -> answer"}, "status": "active"}
    )
    return token.key, str(program.id)


def bench_dspex(base_url: str, n: int, model: str) -> dict:
    token, program_id = setup_django_objects()
    web, port = start_web(server_env(base_url, model))
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Token {token}"
        url = f"http://127.0.0.1:{port}/api/v1/programs/{program_id}/execute/"

        def call(i: int) -> None:
            body = {"input": {"question": f"What is question {i}?"}, "wait": True, "cache": False}
            response = session.post(url, json=body, timeout=30)
            assert response.status_code == 200, response.text

        for i in range(50):
            call(-i - 1)
        latencies = []
        cpu0, pg0 = tree_cpu_s(web.pid), postgres_cpu_s()
        for i in range(n):
            started = time.perf_counter()
            call(i)
            latencies.append((time.perf_counter() - started) * 1000)
        web_cpu, pg_cpu = tree_cpu_s(web.pid) - cpu0, postgres_cpu_s() - pg0
    finally:
        web.terminate()
        web.wait(timeout=20)
    return {
        "latencies": latencies,
        "cpu_ms": (web_cpu + pg_cpu) * 1000 / n,
        "web_cpu_ms": web_cpu * 1000 / n,
        "pg_cpu_ms": pg_cpu * 1000 / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument(
        "--model",
        default="openai/gpt-4o-mini",
        help="model name sent to simlm; DSPy prices known names cheaply and scans its table for unknown ones",
    )
    args = parser.parse_args()
    from dspex_site.launch import postgres_problem

    problem = postgres_problem(os.environ.get("DATABASE_URL", "postgres://localhost:5432/dspex"))
    if problem:
        sys.exit(problem)
    sim_port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "manage.py", "simlm", "--host", "127.0.0.1", "--port", str(sim_port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/health")
        base_url = f"http://127.0.0.1:{sim_port}/v1"
        direct = bench_direct(base_url, args.n, args.model)
        dspex = bench_dspex(base_url, args.n, args.model)
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    rows = []
    for name, result in (("DSPy direct", direct), ("DSPex API wait=true", dspex)):
        lat = result["latencies"]
        rows.append((name, statistics.median(lat), percentile(lat, 0.99), result["cpu_ms"]))
    cores = psutil.cpu_count()
    print(f"one-step Predict, {args.model} on simlm 0 ms, cache off, n={args.n}, sequential, {cores} cores")
    print(f"{'path':<22}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/exec':>13}")
    for name, p50, p99, cpu in rows:
        print(f"{name:<22}{p50:>9.2f}{p99:>9.2f}{cpu:>13.2f}")
    web_ms, pg_ms = dspex["web_cpu_ms"], dspex["pg_cpu_ms"]
    print(f"DSPex CPU split: web {web_ms:.2f} ms + postgres {pg_ms:.2f} ms per execution")
    print(
        f"ratio DSPex/direct: p50 x{rows[1][1] / rows[0][1]:.2f}, p99 x{rows[1][2] / rows[0][2]:.2f}, "
        f"CPU x{rows[1][3] / rows[0][3]:.2f}"
    )


if __name__ == "__main__":
    main()
