"""`migrate` on the direct connection when there is one (`DATABASE_DIRECT_URL`).

Behind PgBouncer in transaction mode, `DATABASE_URL` is the pooler; a migration's DDL, its
locks and its time are better held on a session of its own, so a plain `manage.py migrate`
goes to the `direct` alias. `--database` still picks any alias.
"""

from typing import Any

from django.core.management.commands.migrate import Command as MigrateCommand
from django.db import DEFAULT_DB_ALIAS

from dspex_site.db import session_alias


class Command(MigrateCommand):
    def handle(self, *args: Any, **options: Any) -> None:
        if options["database"] == DEFAULT_DB_ALIAS:
            options["database"] = session_alias()
        super().handle(*args, **options)
