"""Settings for the test suite: the real settings, pointed at the tests' own Redis database.

Set through the environment (inherited by the processes the tests start: simlm, gunicorn,
Celery workers) before the project settings read it.
"""

import os

os.environ.setdefault("REDIS_URL", "redis://localhost:6379/15")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-" + "x" * 40)
os.environ.setdefault("LOG_JSON", "0")

from dspex_site.settings import *  # noqa: F403

# No collectstatic before tests: serve assets from the apps, unhashed.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
