from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring and audit"

    def ready(self) -> None:
        from monitoring import telemetry
        from monitoring.metrics import prometheus_handler

        telemetry.attach(prometheus_handler)
        from monitoring import signals  # noqa: F401 - connects the Celery log-context handlers
        from monitoring.otel import configure_from_env

        configure_from_env()
