from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring and audit"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from dspex_site.roles import sync_console_groups

        post_migrate.connect(sync_console_groups, dispatch_uid="dspex-console-groups")
        from monitoring import telemetry
        from monitoring.metrics import prometheus_handler

        telemetry.attach(prometheus_handler)
        from monitoring import signals  # noqa: F401 - connects the Celery log-context handlers
        from monitoring.otel import configure_from_env

        configure_from_env()
