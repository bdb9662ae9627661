"""Send a deliberate task failure through a worker so operators can see it arrive in Sentry."""

import uuid
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from monitoring.tasks import selftest_error


class Command(BaseCommand):
    help = "Queue a task that fails on purpose; its error should appear in Sentry tagged app=dspex."

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.SENTRY_DSN:
            raise CommandError("SENTRY_DSN is not set: Sentry is disabled.")
        marker = uuid.uuid4().hex[:12]
        selftest_error.apply_async(args=(marker,), queue="default")
        self.stdout.write(f"Queued a failing task; look for 'DSPex Sentry self-test {marker}' in Sentry.")
