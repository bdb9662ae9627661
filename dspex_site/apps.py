from django.apps import AppConfig
from django.db.models.signals import post_migrate


class DspexSiteConfig(AppConfig):
    """The project package as an app: it owns the Celery wiring's beat sync and its command, and
    connects the signals that keep the token cache (dspex_site.authentication) current."""

    name = "dspex_site"
    verbose_name = "DSPex"

    def ready(self) -> None:
        from dspex_site.authentication import connect_signals
        from dspex_site.beat import sync_after_migrate

        post_migrate.connect(sync_after_migrate, dispatch_uid="dspex-beat-schedules")
        connect_signals()
