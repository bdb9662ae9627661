"""`GET /api/v1/providers/`, `GET /api/v1/providers/routing/` and the console's Providers page list
every configured provider — kind, endpoint, key source, whether the key is there, timeout, the
effective limits, breaker and health, spend, deployments — and the fallback lists; never a key."""

import logging
import time

import pytest

from llm import budgets, resilience, routing
from tests.factories import ViewerFactory

pytestmark = pytest.mark.django_db

ENV_KEY = "sk-env-0123456789-not-real"
FILE_KEY = "sk-ant-file-9876543210-not-real"
SETTING_KEY = "sk-setting-5555555555-not-real"
URL_PASSWORD = "basic-auth-pw-4242"
KEYS = (ENV_KEY, FILE_KEY, SETTING_KEY, URL_PASSWORD)

DEPLOYMENTS = {
    "smart": {
        "strategy": "weighted",
        "deployments": [
            {"model": "hosted/gpt-4o", "weight": 3},
            {"model": "vendor/claude-3-5-sonnet", "weight": 1},
        ],
    },
    "cheap": {"strategy": "least-busy", "deployments": [{"model": "selfhosted/llama-3-8b"}]},
}
FALLBACKS = {
    "hosted/gpt-4o": ["vendor/claude-3-5-sonnet", "selfhosted/llama-3-8b"],
    "default": ["sim/default"],
}


@pytest.fixture
def three_providers(settings, monkeypatch, tmp_path):
    """A hosted OpenAI (key from env), an Anthropic (key from a file), a self-hosted server with
    basic auth in its URL and no key, and the default provider keyed by its setting."""
    monkeypatch.setenv("HOSTED_KEY", ENV_KEY)
    key_file = tmp_path / "vendor.key"
    key_file.write_text(FILE_KEY + "\n")
    settings.DSPEX_LM_API_KEY = SETTING_KEY
    settings.DSPEX_LM_API_BASE = "http://127.0.0.1:9/v1"
    settings.DSPEX_PROVIDERS = {
        "hosted": {"kind": "openai", "api_base": "http://127.0.0.1:1/v1", "api_key_env": "HOSTED_KEY"},
        "vendor": {
            "kind": "anthropic",
            "api_base": "http://127.0.0.1:2",
            "api_key_file": str(key_file),
            "timeout_s": 12,
        },
        "selfhosted": {"api_base": f"http://ops:{URL_PASSWORD}@127.0.0.1:3/v1"},
        "broken": {"api_key_file": str(tmp_path / "missing.key")},
    }
    settings.DSPEX_PROVIDER_LIMITS = {"vendor": {"rpm": 60, "max_concurrent": 4}}
    settings.DSPEX_MODEL_DEPLOYMENTS = DEPLOYMENTS
    settings.DSPEX_MODEL_FALLBACKS = FALLBACKS
    settings.DSPEX_BUDGETS = {"providers": {"vendor": {"daily": 5}}}
    budgets.invalidate()
    resilience._redis.skip_until = 0.0
    routing.reset_registry()
    yield
    routing.reset_registry()
    budgets.invalidate()


def by_provider(entries: list[dict]) -> dict[str, dict]:
    return {entry["provider"]: entry for entry in entries if entry["configured"]}


def test_every_configured_provider_is_listed_with_its_key_source_never_its_key(api, three_providers):
    response = api.get("/api/v1/providers/")

    assert response.status_code == 200
    found = by_provider(response.json())
    assert set(found) == {"sim", "openai", "hosted", "vendor", "selfhosted", "broken"}
    hosted, vendor, selfhosted = found["hosted"], found["vendor"], found["selfhosted"]
    assert (hosted["name"], hosted["kind"], hosted["endpoint"]) == (
        "hosted@127.0.0.1:1",
        "openai",
        "http://127.0.0.1:1/v1",
    )
    assert (hosted["key_source"], hosted["has_key"]) == ("env:HOSTED_KEY", True)
    assert vendor["kind"] == "anthropic" and vendor["key_source"].startswith("file:") and vendor["has_key"]
    assert (found["openai"]["key_source"], found["openai"]["has_key"]) == ("setting:DSPEX_LM_API_KEY", True)
    assert (selfhosted["key_source"], selfhosted["has_key"]) == ("none", False)
    assert selfhosted["endpoint"] == "http://***@127.0.0.1:3/v1"  # basic-auth userinfo masked
    broken = found["broken"]
    assert broken["has_key"] is False and "cannot be read" in broken["key_error"]
    # Timeouts: the provider's own, else the effective policy's call timeout.
    assert (
        vendor["timeout_s"] == 12.0 and hosted["timeout_s"] == resilience.policy_for("hosted").call_timeout_s
    )
    # Limits are the effective resilience policy; a fresh provider is closed and healthy.
    assert vendor["limits"]["rpm"] == 60 and vendor["limits"]["max_concurrent"] == 4
    assert vendor["limits"]["failure_threshold"] == resilience.policy_for("vendor").failure_threshold
    assert (vendor["state"], vendor["health"], vendor["in_flight"]) == ("closed", "ok", 0)
    assert vendor["budgets"] == [{"period": "daily", "limit_usd": 5.0, "spent_usd": 0.0}]
    # The aliases each provider serves a deployment of.
    assert hosted["deployments"] == [
        {"alias": "smart", "strategy": "weighted", "model": "hosted/gpt-4o", "weight": 3}
    ]
    assert selfhosted["deployments"] == [
        {"alias": "cheap", "strategy": "least-busy", "model": "selfhosted/llama-3-8b", "weight": 1}
    ]
    for key in KEYS:
        assert key not in response.content.decode()


def test_the_routing_listing_shows_deployments_and_fallbacks_as_configured(api, three_providers, settings):
    body = api.get("/api/v1/providers/routing/").json()

    assert body["default_model"] == settings.DSPEX_LM
    assert body["deployments"]["smart"] == {
        "strategy": "weighted",
        "deployments": [
            {"model": "hosted/gpt-4o", "provider": "hosted", "weight": 3},
            {"model": "vendor/claude-3-5-sonnet", "provider": "vendor", "weight": 1},
        ],
    }
    assert body["fallbacks"] == FALLBACKS
    assert body["problems"] == []


def test_breaker_health_and_failures_show_on_the_configured_provider(api, three_providers):
    ticket = resilience.admit("vendor", "http://127.0.0.1:2")
    ticket.finish(failure="provider_error: 503")
    try:
        vendor = by_provider(api.get("/api/v1/providers/").json())["vendor"]
        assert (vendor["state"], vendor["health"], vendor["consecutive_failures"]) == (
            "closed",
            "degraded",
            1,
        )
        assert vendor["last_error"] == "provider_error: 503"
        resilience._redis.skip_until = time.monotonic() + 60  # Redis unavailable: still listed
        vendor = by_provider(api.get("/api/v1/providers/").json())["vendor"]
        assert (vendor["state"], vendor["health"], vendor["kind"]) == ("unknown", "unknown", "anthropic")
        assert vendor["limits"]["rpm"] == 60
    finally:
        resilience._redis.skip_until = 0.0
        resilience.clear("vendor@127.0.0.1:2")


def test_settings_of_any_shape_and_an_invalid_registry_never_fail_the_listing(api, settings):
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "a": "not an object",
        "b": {"deployments": [3, {"weight": 1}, {"model": "x/y", "weight": "3"}]},
    }
    settings.DSPEX_MODEL_FALLBACKS = {"x/y": "not a list", "default": ["sim/default", 7]}
    settings.DSPEX_PROVIDERS = {"bad": {"kind": "cohere"}}
    routing.reset_registry()
    try:
        listing = api.get("/api/v1/providers/")
        body = api.get("/api/v1/providers/routing/").json()
    finally:
        settings.DSPEX_PROVIDERS = {}
        routing.reset_registry()
    assert listing.status_code == 200
    assert body["deployments"] == {
        "b": {"strategy": "weighted", "deployments": [{"model": "x/y", "provider": "x", "weight": None}]}
    }
    assert body["fallbacks"] == {"default": ["sim/default"]}
    assert "DSPEX_PROVIDERS.bad.kind" in body["problems"][0]


def test_the_console_page_lists_providers_deployments_and_fallbacks_without_keys(
    client, api, three_providers, caplog
):
    caplog.set_level(logging.DEBUG)
    client.force_login(ViewerFactory(username="viewer"))

    page = client.get("/admin/providers/").content.decode()
    api.get("/api/v1/providers/")
    api.get("/api/v1/providers/routing/")
    client.get("/metrics")

    for expected in (
        "hosted@127.0.0.1:1",
        "env:HOSTED_KEY",
        "anthropic",
        "vendor/claude-3-5-sonnet",
        "least-busy",
    ):
        assert expected in page
    assert "<td>hosted/gpt-4o</td><td>vendor/claude-3-5-sonnet → selfhosted/llama-3-8b</td>" in page
    logs = "\n".join(record.getMessage() for record in caplog.records) + caplog.text
    for key in KEYS:
        assert key not in page
        assert key not in logs


def test_the_key_presence_gauge_says_which_providers_have_a_key(client, three_providers):
    exposed = client.get("/metrics").content.decode()

    assert 'dspex_provider_key_present{kind="openai",provider="hosted"} 1.0' in exposed
    assert 'dspex_provider_key_present{kind="openai",provider="selfhosted"} 0.0' in exposed
    assert 'dspex_provider_key_present{kind="anthropic",provider="vendor"} 1.0' in exposed
    assert 'provider="sim"' not in exposed.split("dspex_provider_key_present", 1)[1].split("# HELP", 1)[0]
    for key in KEYS:
        assert key not in exposed


@pytest.fixture
def wsgi_app():
    """The WSGI app called directly, keeping the test's database connection between requests."""
    from django.core import signals
    from django.db import close_old_connections

    from dspex_site.wsgi import application

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield application
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.parametrize("path", ["/api/v1/providers/", "/api/v1/providers/routing/"])
def test_a_full_configuration_answers_as_the_schema_documents(api, three_providers, wsgi_app, path):
    import schemathesis
    from schemathesis.specs.openapi.checks import response_schema_conformance

    ticket = resilience.admit("vendor", "http://127.0.0.1:2")
    ticket.finish(failure="provider_error: 503")  # a last error and its time, too
    try:
        operation = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_app)[path]["GET"]
        case = operation.Case()
        response = case.call(headers={"Authorization": api._credentials["HTTP_AUTHORIZATION"]})
        assert response.status_code == 200
        case.validate_response(response, checks=[response_schema_conformance])
    finally:
        resilience.clear("vendor@127.0.0.1:2")
