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
    assert set(body["checks"]) == {"database", "replica", "cache", "redis", "broker", "workers", "beat"}
    assert body["checks"]["redis"]["status"] == "ok" and body["checks"]["redis"]["mode"] in (
        "single",
        "sentinel",
    )
    critical = {name for name, check in body["checks"].items() if check["critical"]}
    assert critical == {"database", "cache", "broker"}
    assert all(body["checks"][name]["status"] == "ok" for name in critical)
    assert body["checks"]["database"]["vendor"] == "postgresql"
    assert body["checks"]["replica"]["configured"] is False  # tests/datatier/test_replica.py has one
    # No worker or beat runs in this test: the service is degraded, not down.
    assert body["status"] == "degraded"
    assert "no live worker" in body["checks"]["workers"]["error"]


def test_ready_sees_a_live_worker_per_queue(client, transactional_db):
    from tests.support import start_worker

    workers = [
        start_worker(queues="llm_calls,priority"),
        start_worker(queues="default,embeddings,cleanup"),
        start_worker(queues="optimization", pool="solo", concurrency=1),
    ]
    try:
        body = client.get("/health/ready").json()
    finally:
        for worker in workers:
            worker.stop()
    assert body["checks"]["workers"]["status"] == "ok", body["checks"]["workers"]
    groups = body["checks"]["workers"]["groups"]
    assert groups["llm"]["llm_calls"] and groups["optimization"]["optimization"]


def test_ready_sees_beat_alive(client, transactional_db, tmp_path):
    from monitoring.heartbeat import BEAT_KEY, _client
    from tests.support import process_env, start_beat, stop, wait_for

    _client().delete(BEAT_KEY)
    assert client.get("/health/ready").json()["checks"]["beat"]["status"] == "error"
    beat = start_beat(process_env(), tmp_path)
    try:
        wait_for(
            lambda: client.get("/health/ready").json()["checks"]["beat"]["status"] == "ok",
            60,
            "beat heartbeat",
        )
    finally:
        stop(beat)
    metrics = client.get("/metrics").content.decode()
    assert "dspex_beat_heartbeat_timestamp_seconds " in metrics


def test_ready_answers_within_a_second_when_a_dependency_hangs(client, settings):
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers: a hung broker
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
    try:
        started = time.monotonic()
        response = client.get("/health/ready")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert elapsed < 1.0
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "error"


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
