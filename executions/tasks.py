"""Celery tasks for executions. Thin: load by id, call the runner or housekeeping, apply the
retry policy (README "Retries"):

- provider 429 → back to `pending`, run again after its Retry-After (or 60 s); the attempt is
  given back, because the provider refused it before doing any work;
- transient (timeouts, 5xx, connection) → run again after base * 2^n s, at most 5 attempts;
- permanent → failed at once.

The task layer is the only one that retries: the gateway builds every `dspy.LM` with
`num_retries=0`, and Celery's own `autoretry` is not used, so one attempt is one provider call
per LM call of the program.

Tasks import the domain modules, never the reverse: domain code publishes a run with
`execution.publish()` (dspex_site.jobs). Queues and time limits are in dspex_site.celery.TASKS.
"""

import logging

from celery import Task, shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from executions import batches, housekeeping, runner, sessions
from executions.models import CognitiveExecution
from llm.errors import RATE_LIMIT, TRANSIENT, Failure

logger = logging.getLogger(__name__)


def retry_delay(failure: Failure, execution: CognitiveExecution) -> float | None:
    """Seconds until the next attempt, or None when the failure is final."""
    if failure.kind == RATE_LIMIT:
        refused = sum(1 for e in execution.errors if e.get("type") == failure.type)
        if refused >= settings.DSPEX_MAX_RATE_LIMIT_REQUEUES:
            return None
        return failure.retry_after or settings.DSPEX_RATE_LIMIT_DEFAULT_WAIT_S
    if failure.kind == TRANSIENT and execution.attempts < settings.DSPEX_MAX_ATTEMPTS:
        return settings.DSPEX_RETRY_BACKOFF_BASE_S * 2**execution.attempts
    return None


@shared_task(name="executions.run", bind=True, acks_late=True, reject_on_worker_lost=True)
def run_execution_task(self: Task, execution_id: str) -> str:
    try:
        outcome = runner.run_execution(execution_id, retry=retry_delay)
    except CognitiveExecution.DoesNotExist:
        # Deleted (pruned, or its program deleted) after the message was published.
        logger.warning("execution %s no longer exists; nothing to run", execution_id)
        return "missing"
    except (OperationalError, InterfaceError) as exc:
        # The database is restarting before the row was claimed: try again shortly rather than
        # lose the message (a claimed row is protected by the runner's own write retries).
        connection.close()
        raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 30), max_retries=30) from exc
    execution = outcome.execution
    if outcome.requeue_in is not None:
        logger.info("execution %s re-queued in %.1f s", execution_id, outcome.requeue_in)
        # If the broker is down now, the row stays pending and the reaper publishes it later.
        execution.publish(countdown=outcome.requeue_in)
    elif outcome.ran and execution.batch_id is not None:
        batches.dispatch_next(execution.batch_id)
    return execution.status


@shared_task(name="executions.dispatch_batch", acks_late=True)
def dispatch_batch_task(batch_id: str) -> int:
    return batches.dispatch(batch_id)


@shared_task(name="executions.reap", acks_late=True)
def reap_task() -> dict:
    return housekeeping.reap()


@shared_task(name="executions.prune", acks_late=True)
def prune_task() -> int:
    deleted, more = housekeeping.prune()
    if more:  # bounded work per task run: the rest goes in the next message
        prune_task.apply_async(countdown=1)
    return deleted


@shared_task(name="executions.prune_sessions", acks_late=True)
def prune_sessions_task() -> int:
    deleted, more = sessions.prune()
    if more:  # bounded work per task run, as `executions.prune`
        prune_sessions_task.apply_async(countdown=1)
    return deleted


@shared_task(name="executions.analyze", acks_late=True)
def analyze_task() -> list[str]:
    return housekeeping.analyze()
