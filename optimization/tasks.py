"""Celery tasks for optimization. Thin: load by id, call the runner, apply the retry policy."""

import logging

from celery import shared_task
from django.conf import settings

from optimization import runner, schedules
from optimization.models import OptimizationRun

logger = logging.getLogger(__name__)


def enqueue_run(run: OptimizationRun) -> None:
    run_optimization_task.apply_async(args=[str(run.id)])


@shared_task(
    name="optimization.run",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=2,
    time_limit=4 * 3600,
    soft_time_limit=4 * 3600 - 300,
)
def run_optimization_task(run_id: str) -> str:
    if not OptimizationRun.objects.filter(id=run_id).exists():
        logger.warning("optimization run %s no longer exists; nothing to run", run_id)
        return "missing"
    run = runner.run_optimization(run_id)
    return "not claimed" if run is None else run.status


@shared_task(name="optimization.reap_stale")
def reap_stale_runs() -> int:
    """Re-queue runs whose worker stopped sending heartbeats (killed, OOM, machine lost).

    The broker would only re-deliver after its visibility timeout (longer than 4 h); the stale
    heartbeat tells us much sooner. Runs out of attempts are failed instead.
    """
    stale_s = getattr(settings, "DSPEX_OPTIMIZATION_STALE_S", 60)
    requeued = 0
    for run in OptimizationRun.objects.stale(stale_s):
        if run.attempts >= run.max_attempts:
            OptimizationRun.objects.filter(id=run.id, status=OptimizationRun.Status.RUNNING).update(
                status=OptimizationRun.Status.FAILED,
                message=f"Worker lost on attempt {run.attempts} of {run.max_attempts}; giving up.",
                error={"type": "worker_lost", "message": "no heartbeat"},
            )
            OptimizationRun.sync_program_status(run.program_id)
            continue
        # Back to pending (still conditional on the stale heartbeat): the next claim is then
        # decided by the row, not by each worker's own idea of "stale".
        released = (
            OptimizationRun.objects.stale(stale_s)
            .filter(id=run.id)
            .update(status=OptimizationRun.Status.PENDING, worker="")
        )
        if released:
            enqueue_run(run)
            requeued += 1
    return requeued


@shared_task(name="optimization.scheduled")
def scheduled_optimization(schedule_id: str) -> str:
    run = schedules.start_scheduled_run(schedule_id)
    if run is None:
        return "missing"
    if run.status == OptimizationRun.Status.PENDING:
        enqueue_run(run)
    return run.status
