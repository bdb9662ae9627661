"""Monitoring tasks (queues and time limits in dspex_site.celery.TASKS)."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


class SentrySelfTestError(RuntimeError):
    """Raised on purpose by `monitoring.selftest_error` so operators can see Sentry receive it."""


@shared_task(name="monitoring.selftest_error")
def selftest_error(marker: str) -> None:
    """Fail on purpose: `manage.py dspex_sentry_check` uses it to prove task errors reach Sentry."""
    # The extra holds the kind of data Sentry must never receive (a prompt); scrubbing removes it.
    logger.error("self-test task about to fail", extra={"messages": [{"role": "user", "content": marker}]})
    raise SentrySelfTestError(f"DSPex Sentry self-test {marker}")


@shared_task(name="monitoring.rollup")
def rollup() -> int:
    """Recompute the current and previous hour's usage rollups (beat, every minute)."""
    from monitoring.rollups import rollup_recent

    return rollup_recent()
