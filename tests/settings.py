"""Settings for the test suite: the real settings, pointed at the tests' own Redis database.

Set through the environment (inherited by the processes the tests start: simlm, gunicorn,
Celery workers) before the project settings read it.
"""

import os

# DSPEX_TEST_SLOT lets several suites share one machine (CI and developers' runs): each slot
# gets its own test database and Redis database.
_slot = int(os.environ.get("DSPEX_TEST_SLOT", "0"))
os.environ.setdefault("REDIS_URL", f"redis://localhost:6379/{15 - _slot}")
# DSPEX_TEST_BROKER=amqp: the Celery broker is the machine's RabbitMQ, in a virtual host of this
# slot's own (created and deleted by tests/conftest.py), instead of the slot's Redis database.
# `make test` runs the broker-marked tests (queues, retries, batches, crashes) both ways.
if os.environ.get("DSPEX_TEST_BROKER") == "amqp":
    os.environ.setdefault("CELERY_BROKER_URL", f"amqp://guest:guest@localhost:5672/dspex-test-{_slot}")
os.environ.setdefault("DATABASE_TEST_NAME", f"test_dspex_{_slot}" if _slot else "test_dspex")
os.environ.setdefault("DJANGO_SECRET_KEY", "test-only-secret-key-" + "x" * 40)
os.environ.setdefault("LOG_JSON", "0")
os.environ.setdefault("DJANGO_HTTPS", "0")  # the test client and test servers speak plain http

from dspex_site.settings import *  # noqa: E402, F403

# No collectstatic before tests: serve assets from the apps, unhashed.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True

# Factories create users in most tests; the production hasher's million PBKDF2 rounds would make
# each one cost a large fraction of a second. Password strength is not what the suite tests.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
