"""Create or update the housekeeping beat schedules (idempotent; the migration does it too)."""

from django.core.management.base import BaseCommand

from executions.housekeeping import ensure_schedules


class Command(BaseCommand):
    help = "Create or update the beat schedules for reaping, pruning and ANALYZE (idempotent)."

    def handle(self, *args: object, **options: object) -> None:
        for name in ensure_schedules():
            self.stdout.write(f"schedule ok: {name}")
