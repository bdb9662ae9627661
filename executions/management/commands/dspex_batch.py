"""`manage.py dspex_batch <program> inputs.jsonl -o results.jsonl`: run a batch from the shell.

The batch is the same as `POST /api/v1/batches/`: its items run on the workers (bounded by
`--concurrency`) while a progress bar follows them; results are written as JSONL in input
order. `--in-process` runs the items in this process's threads instead (no worker needed).
"""

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from tqdm import tqdm

from dspex_site.commands import (
    add_project_argument,
    by_name_or_id,
    domain_errors_as_command_errors,
)
from executions import batches, runner
from executions.models import CognitiveExecution
from programs.models import CognitiveProgram


class Command(BaseCommand):
    help = "Run a program on every input of a JSONL file and write the results as JSONL."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("program", help="program name or id")
        add_project_argument(parser)
        parser.add_argument("inputs", help="JSONL file, one input object per line ('-' for stdin)")
        parser.add_argument("-o", "--output", required=True, help="results JSONL file ('-' for stdout)")
        parser.add_argument("--concurrency", type=int, default=None)
        parser.add_argument("--priority", choices=["normal", "high"], default="normal")
        parser.add_argument("--no-cache", action="store_true", help="bypass the LLM response cache")
        parser.add_argument("--in-process", action="store_true", help="run in this process, not on workers")
        parser.add_argument("--timeout", type=float, default=0, help="give up after this many seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        program = self._program(options["program"], options.get("project"))
        # Bytes in, decoded per line by parse_jsonl: a file that is not UTF-8 is a clear error.
        with domain_errors_as_command_errors():
            if options["inputs"] == "-":
                inputs = batches.parse_jsonl(sys.stdin.buffer)
            else:
                with Path(options["inputs"]).open("rb") as source:
                    inputs = batches.parse_jsonl(source)
            batch = batches.create_batch(
                program,
                inputs,
                concurrency=options["concurrency"],
                priority=options["priority"],
                use_cache=not options["no_cache"],
                dispatch_on_commit=not options["in_process"],
            )
        self.stderr.write(f"batch {batch.id}: {batch.total} inputs, concurrency {batch.concurrency}")
        if options["in_process"]:
            self._run_here(batch)
        else:
            self._follow(batch, options["timeout"])
        self._write(batch, options["output"])

    def _program(self, ref: str, project: str | None = None) -> CognitiveProgram:
        return by_name_or_id(CognitiveProgram.objects.all(), ref, project, "program")

    def _follow(self, batch: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout if timeout else None
        with tqdm(total=batch.total, unit="exec", file=self.stderr._out) as bar:
            while True:
                state = batches.progress(batch)
                bar.update(state["finished"] - bar.n)
                bar.set_postfix(failed=state["counts"]["failed"], running=state["counts"]["running"])
                if state["finished"] >= state["total"]:
                    return
                if deadline and time.monotonic() > deadline:
                    raise CommandError(f"batch {batch.id} not finished after {timeout:.0f} s")
                time.sleep(0.5)

    def _run_here(self, batch: Any) -> None:
        from executions.tasks import retry_delay

        ids = list(
            CognitiveExecution.objects.filter(batch=batch)
            .order_by("batch_index")
            .values_list("id", flat=True)
        )

        def run(execution_id: Any) -> None:
            try:
                outcome = runner.run_execution(execution_id, retry=retry_delay)
                while outcome.requeue_in is not None:
                    time.sleep(outcome.requeue_in)
                    outcome = runner.run_execution(execution_id, retry=retry_delay)
            finally:
                connection.close()  # each pool thread has its own connection

        bar = tqdm(total=len(ids), unit="exec", file=self.stderr._out)
        with bar, ThreadPoolExecutor(max_workers=batch.concurrency) as pool:
            for _ in pool.map(run, ids):
                bar.update(1)

    def _write(self, batch: Any, target: str) -> None:
        if target == "-":
            sys.stdout.writelines(batches.result_lines(batch.id))
            return
        with Path(target).open("w") as out:
            out.writelines(batches.result_lines(batch.id))
        self.stderr.write(f"results written to {target}")
