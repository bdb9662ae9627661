"""Throttling per token, CORS, CSRF and `check --deploy` (subprocess); access by role is in
tests/api/test_endpoints.py."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from dspex_site.permissions import TokenRateThrottle

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db

# Which actor may call which endpoint (401/403 for the others, nothing written) is checked for
# every /api/v1/ operation by tests/api/test_endpoints.py.


def test_health_and_metrics_need_no_token(anonymous):
    assert anonymous.get("/health/live").status_code == 200
    assert anonymous.get("/metrics").status_code == 200


def test_requests_are_throttled_per_token(actors, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "3/min"})
    viewer = actors["viewer"].client
    assert [viewer.get("/api/v1/programs/").status_code for _ in range(3)] == [200, 200, 200]
    throttled = viewer.get("/api/v1/programs/")
    assert throttled.status_code == 429 and throttled.json()["code"] == "throttled"
    assert "Retry-After" in throttled
    assert actors["operator"].client.get("/api/v1/programs/").status_code == 200  # its own budget


def test_the_throttle_is_one_counter_per_key_and_window_and_says_when_to_come_back(actors, monkeypatch):
    import time

    from django.core.cache import cache

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "3/s"})
    viewer = actors["viewer"]
    statuses = [viewer.client.get("/api/v1/programs/").status_code for _ in range(4)]
    if statuses != [200, 200, 200, 429]:  # the 1 s window turned over mid-burst: once more, fresh
        time.sleep(2.1)
        statuses = [viewer.client.get("/api/v1/programs/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # One small integer per key and window (not a list of timestamps): 3 counted, the refused
    # request not.
    from projects.models import ApiKey

    api_key = ApiKey.objects.get(user=viewer.user)
    raw = TokenRateThrottle.redis.raw()
    counters = [k for k in raw.keys(f"*throttle_user_key{api_key.pk}:*")]
    assert counters and sorted(int(raw.get(k)) for k in counters)[-1] == 3
    assert cache.get(f"throttle_user_key{api_key.pk}") is None  # no DRF history list
    refused = viewer.client.get("/api/v1/programs/")
    wait = float(refused["Retry-After"])
    assert refused.status_code == 429 and 0 < wait <= 2.0
    time.sleep(wait + 0.05)  # as told: the next request passes
    assert viewer.client.get("/api/v1/programs/").status_code == 200


def test_the_throttle_fails_open_when_its_redis_is_unreachable(actors, monkeypatch, settings, private_redis):
    from dspex_site import shared_redis
    from tests.caching.conftest import redis_cache

    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "1/min"})
    settings.CACHES = {**settings.CACHES, "default": redis_cache(private_redis.url, timeout=0.3)}
    shared_redis.reset()
    viewer = actors["viewer"].client
    assert [viewer.get("/api/v1/programs/").status_code for _ in range(2)] == [200, 429]
    private_redis.stop()
    try:
        assert [viewer.get("/api/v1/programs/").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        shared_redis.reset()


def test_cors_allows_only_configured_origins(actors, settings):
    settings.CORS_ALLOWED_ORIGINS = ["https://app.example.com"]
    client = actors["viewer"].client
    allowed = client.get("/api/v1/programs/", HTTP_ORIGIN="https://app.example.com")
    assert allowed["Access-Control-Allow-Origin"] == "https://app.example.com"
    other = client.get("/api/v1/programs/", HTTP_ORIGIN="https://evil.example.net")
    assert "Access-Control-Allow-Origin" not in other
    preflight = client.options(
        "/api/v1/programs/",
        HTTP_ORIGIN="https://app.example.com",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type",
    )
    assert "authorization" in preflight["Access-Control-Allow-Headers"]


def test_session_writes_need_a_csrf_token_token_writes_do_not(actors):
    session = APIClient(enforce_csrf_checks=True)
    session.force_login(actors["operator"].user)
    body = {"name": "csrf", "pipeline": {"signature": "question -> answer"}}
    refused = session.post("/api/v1/programs/", body, format="json")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert actors["operator"].client.post("/api/v1/programs/", body, format="json").status_code == 201


def _production_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DSPEX_"))}
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "dspex_site.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "dspex.example.com",
        **extra,
    }


def test_check_deploy_has_no_warnings_under_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_local_plain_http_runs_turn_the_https_settings_off():
    probe = "from django.conf import settings as s; print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS)"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        cwd=ROOT,
        env=_production_env(DJANGO_HTTPS="0", DJANGO_SECURE_COOKIES="0"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["False", "0"], result.stderr
