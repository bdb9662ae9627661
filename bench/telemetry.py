"""What telemetry costs: per event, and per execution with and without handlers.

Runs executions of a two-step program in this process through `executions.runner` (in-process
simulated provider, cache off) with the telemetry handlers attached (Prometheus) and detached,
alternating rounds so machine noise hits both alike, and prints CPU ms per execution for each and
the cost of one `emit()`. Usage: `python bench/telemetry.py [--n 300]` (needs Postgres; uses the
`dspex` database or DATABASE_URL).
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")

PIPELINE = {
    "steps": [
        {"name": "draft", "module": "Predict", "signature": "question -> answer"},
        {
            "name": "final",
            "module": "Predict",
            "signature": "question, draft -> answer",
            "inputs": {"question": "$input.question", "draft": "$draft.answer"},
        },
    ]
}


def cpu_per_execution(program: object, n: int, offset: int) -> float:
    from executions import runner

    started = time.process_time()
    for i in range(n):
        execution = runner.create_execution(
            program, {"question": f"telemetry {offset + i}?"}, use_cache=False
        )
        assert runner.run_execution(execution).execution.status == "succeeded"
    return (time.process_time() - started) * 1000 / n


def emit_cost_us(rounds: int = 20000) -> float:
    from monitoring import telemetry

    meta = {"provider": "sim", "model": "sim/default", "status": "ok"}
    started = time.perf_counter()
    for _ in range(rounds):
        telemetry.emit("llm.request.stop", {"duration_ms": 1.0}, meta)
    return (time.perf_counter() - started) * 1e6 / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from dspex_site.launch import postgres_problem

    problem = postgres_problem(os.environ.get("DATABASE_URL", "postgres://localhost:5432/dspex"))
    if problem:
        sys.exit(problem)
    import django

    django.setup()
    from django.core.management import call_command

    from monitoring import telemetry
    from programs.models import CognitiveProgram

    call_command("migrate", verbosity=0)
    program, _ = CognitiveProgram.objects.update_or_create(
        name="bench-telemetry", defaults={"pipeline": PIPELINE, "status": "active"}
    )
    handlers = list(telemetry._handlers)
    cpu_per_execution(program, 30, -100)  # warm up
    with_handlers, without = [], []
    for r in range(args.rounds):
        telemetry._handlers[:] = handlers
        with_handlers.append(cpu_per_execution(program, args.n, r * 2 * args.n))
        emit_with = emit_cost_us()
        telemetry._handlers[:] = []
        without.append(cpu_per_execution(program, args.n, (r * 2 + 1) * args.n))
        emit_without = emit_cost_us()
    telemetry._handlers[:] = handlers
    on, off = statistics.median(with_handlers), statistics.median(without)
    print(f"two-step program, in-process sim, n={args.n} x {args.rounds} rounds, handlers: {handlers}")
    print(f"CPU per execution with handlers    {on:7.3f} ms")
    print(f"CPU per execution without handlers {off:7.3f} ms")
    print(f"telemetry cost per execution       {on - off:7.3f} ms ({(on - off) / off * 100:.1f}%)")
    print(f"one emit(): {emit_with:.2f} us with handlers, {emit_without:.2f} us without")


if __name__ == "__main__":
    main()
