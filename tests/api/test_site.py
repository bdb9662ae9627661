"""Health, OpenAPI, Swagger UI with local assets."""

import pytest

pytestmark = pytest.mark.django_db


def test_live_is_trivial(client):
    response = client.get("/health/live")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_ready_reports_each_dependency(client):
    response = client.get("/health/ready")
    body = response.json()
    assert response.status_code == 200, body
    assert body["mode"] == "standard"
    assert set(body["checks"]) == {"database", "cache", "broker"}
    assert all(check["status"] == "ok" for check in body["checks"].values())
    assert body["checks"]["database"]["vendor"] == "postgresql"


def test_ready_is_503_and_names_the_broken_dependency(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "error"


def test_openapi_schema_describes_the_api(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert "/api/v1/programs/{id}/execute/" in schema["paths"]
    assert "/api/v1/executions/{id}/cancel/" in schema["paths"]


def test_swagger_ui_uses_local_assets(api):
    response = api.get("/api/docs/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
