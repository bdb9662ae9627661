"""Celery tasks for executions. Thin: load by id, call the runner, apply the retry policy."""

import logging

from celery import shared_task

from dspex_site.celery import Queue
from executions import runner
from executions.models import CognitiveExecution

logger = logging.getLogger(__name__)


def queue_for(execution: CognitiveExecution) -> str:
    return Queue.PRIORITY if execution.priority == CognitiveExecution.Priority.HIGH else Queue.LLM_CALLS


def enqueue_execution(execution: CognitiveExecution) -> None:
    run_execution_task.apply_async(args=[str(execution.id)], queue=queue_for(execution))


@shared_task(name="executions.run", acks_late=True, reject_on_worker_lost=True)
def run_execution_task(execution_id: str) -> str:
    if not CognitiveExecution.objects.filter(id=execution_id).exists():
        logger.warning("execution %s no longer exists; nothing to run", execution_id)
        return "missing"
    outcome = runner.run_execution(execution_id)
    return outcome.execution.status
