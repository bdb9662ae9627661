from django.apps import AppConfig


class ProjectsConfig(AppConfig):
    """Projects and their members: what every program, dataset and corpus belongs to, and the
    per-project roles the API and the console check (`projects.access`)."""

    name = "projects"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from projects.access import connect_signals

        connect_signals()
