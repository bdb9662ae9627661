"""The DSPex project package: settings, URLs, the Celery app and the WSGI entry point."""

from dspex_site.celery import app as celery_app

__all__ = ["celery_app"]
