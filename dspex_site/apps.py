from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DspexSiteConfig(AppConfig):
    """The project package as an app: it owns the Celery wiring's beat sync and its command, and
    connects the signals that keep the token cache (dspex_site.authentication) current."""

    name = "dspex_site"
    verbose_name = "DSPex"

    def ready(self) -> None:
        from django.core import checks

        from dspex_site.authentication import connect_signals
        from dspex_site.beat import sync_after_migrate
        from dspex_site.db import check_connections

        # Database-tagged: run by `migrate` and `check --database ALIAS`, which connect anyway.
        checks.register(check_connections, checks.Tags.database)

        post_migrate.connect(sync_after_migrate, dispatch_uid="dspex-beat-schedules")
        connect_signals()
