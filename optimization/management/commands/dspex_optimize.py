"""Start an optimization run; with --wait, follow it with a live progress bar (or run it here)."""

import json
import threading
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from dspex_site.commands import (
    add_project_argument,
    by_name_or_id,
    domain_errors_as_command_errors,
)
from optimization import runner
from optimization.models import Dataset, OptimizationRun
from optimization.optimizers import OPTIMIZERS
from programs.models import CognitiveProgram


def bar(progress: dict, width: int = 30) -> str:
    done, total = progress.get("trials_done", 0), progress.get("trials_total") or 0
    filled = int(width * min(done / total, 1)) if total else 0
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total or '?'} {progress.get('phase', ''):<9} "
        f"best={progress.get('best_score')} calls={progress.get('lm_calls', 0)} "
        f"cached={progress.get('cache_hits', 0)} cost=${progress.get('cost_usd', 0)}"
    )


class Command(BaseCommand):
    help = "Optimize a program on a dataset. --wait shows a live progress bar until it finishes."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("program", help="Program name or id.")
        parser.add_argument("--optimizer", required=True, choices=OPTIMIZERS)
        parser.add_argument("--dataset", required=True, help="Dataset name or id.")
        add_project_argument(parser)
        parser.add_argument("--metric", default="exact_match", help='A name or JSON {"name": ...}.')
        parser.add_argument("--config", default="{}", help="Optimizer config as JSON.")
        parser.add_argument("--split", default="{}", help='e.g. {"dev_fraction": 0.3, "seed": 0}')
        parser.add_argument("--apply", action="store_true", help="Apply the result if it beats the baseline.")
        parser.add_argument("--wait", action="store_true", help="Follow progress until the run finishes.")
        parser.add_argument("--inline", action="store_true", help="Run in this process instead of a worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        program = self.lookup(CognitiveProgram, options["program"], options.get("project"))
        # The program's project: a run never mixes one project's program with another's data.
        dataset = self.lookup(Dataset, options["dataset"], program.project.name)
        metric = options["metric"]
        metric = json.loads(metric) if metric.startswith("{") else metric
        with domain_errors_as_command_errors(), transaction.atomic():
            run = runner.create_run(
                program,
                dataset,
                options["optimizer"],
                metric,
                config=json.loads(options["config"]),
                split=json.loads(options["split"]),
                apply=options["apply"],
            )
            if not options["inline"]:
                transaction.on_commit(run.publish)
        self.stdout.write(f"Run {run.id} queued.")
        worker = None
        if options["inline"]:
            worker = threading.Thread(target=self.run_inline, args=[run.id], daemon=True)
            worker.start()
        if options["wait"] or options["inline"]:
            self.follow(run, worker)

    @staticmethod
    def run_inline(run_id: Any) -> None:
        try:
            runner.run_optimization(run_id)
        finally:
            connection.close()

    def follow(self, run: OptimizationRun, worker: threading.Thread | None) -> None:
        while True:
            run.refresh_from_db()
            self.stdout.write("\r" + bar(run.progress), ending="")
            self.stdout.flush()
            if run.is_finished or (worker is not None and not worker.is_alive()):
                run.refresh_from_db()
                break
            time.sleep(0.5)
        self.stdout.write("")
        metrics = run.result.performance_metrics if run.result else {}
        self.stdout.write(
            f"{run.status}: baseline={metrics.get('baseline_score')} "
            f"optimized={metrics.get('optimized_score')} result={run.result_id} {run.message}"
        )
        if run.status != OptimizationRun.Status.SUCCEEDED:
            raise CommandError(run.message or str(run.error))

    @staticmethod
    def lookup(model: Any, key: str, project: str | None = None) -> Any:
        return by_name_or_id(model.objects.all(), key, project, str(model._meta.verbose_name))
