"""Celery tasks for optimization. Thin: load by id, call the runner, the reaper or the schedule.

Queues and time limits are in dspex_site.celery.TASKS; domain code publishes a run with
`run.publish()` (dspex_site.jobs), never through this module.
"""

import logging

from celery import shared_task

from dspex_site import jobs
from optimization import runner, schedules
from optimization.models import OptimizationRun

logger = logging.getLogger(__name__)


@shared_task(name="optimization.run", acks_late=True, reject_on_worker_lost=True)
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
    return jobs.reap_lost(OptimizationRun)


@shared_task(name="optimization.scheduled")
def scheduled_optimization(schedule_id: str) -> str:
    run = schedules.start_scheduled_run(schedule_id)
    if run is None:  # gone, or nothing to start this tick (the schedule's last_message says why)
        return "nothing started"
    if run.status == OptimizationRun.Status.PENDING:
        run.publish()
    return run.status
