"""Create or update every beat schedule of the task table (idempotent; `migrate` does it too)."""

from django.core.management.base import BaseCommand

from dspex_site.beat import sync_schedules


class Command(BaseCommand):
    help = "Create or update the beat schedules declared in dspex_site.celery.TASKS (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        for name, what in sync_schedules().items():
            self.stdout.write(f"schedule {what}: {name}")
