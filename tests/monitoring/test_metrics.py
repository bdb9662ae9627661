"""Prometheus metrics at /metrics: our series, promtool-valid, aggregated across processes."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import requests
from django.contrib.auth import get_user_model

from bench.common import free_port, wait_http
from tests.support import ROOT, process_env, start_worker

pytestmark = pytest.mark.django_db


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in exposition text (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.content.decode()


def test_an_execution_moves_our_metrics(client, api, make_program, settings):
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, "sim": {"prompt": 1.0, "completion": 2.0}}
    program = make_program(name="metrics-qa")
    before = scrape(client)
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "count me"}, "wait": True},
        format="json",
    ).json()
    after = scrape(client)
    call = next(e for e in body["trace"] if e["kind"] == "lm")

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("dspex_execution_total", program="metrics-qa", status="succeeded") == 1
    assert delta("dspex_execution_duration_seconds_count", program="metrics-qa", status="succeeded") == 1
    assert delta("dspex_llm_request_total", provider="sim", model="sim/default", status="ok") == 1
    assert delta("dspex_llm_tokens_total", model="sim/default", type="prompt") == call["prompt_tokens"]
    assert (
        delta("dspex_llm_tokens_total", model="sim/default", type="completion") == call["completion_tokens"]
    )
    assert delta("dspex_llm_cost_usd_total", provider="sim", model="sim/default") == pytest.approx(
        call["cost_usd"]
    )
    assert delta("dspex_cache_miss_total", cache="llm") == 1
    assert "dspex_cache_hit_ratio" in after and "dspex_queue_depth" in after
    assert "django_http_requests_total_by_method_total" in after  # django-prometheus's own
    assert "execution_id" not in after and str(program.id) not in after  # no ids in labels


def test_cache_hit_ratio_is_derived_from_hits_and_misses(client, api, make_program):
    program = make_program(name="ratio-qa")
    for _ in range(2):
        api.post(
            f"/api/v1/programs/{program.id}/execute/",
            {"input": {"question": "again"}, "wait": True},
            format="json",
        )
    text = scrape(client)
    hits, misses = (
        sample(text, "dspex_cache_hit_total", cache="llm"),
        sample(text, "dspex_cache_miss_total", cache="llm"),
    )
    assert hits >= 1
    assert sample(text, "dspex_cache_hit_ratio", cache="llm") == pytest.approx(hits / (hits + misses))


@pytest.mark.skipif(
    shutil.which("promtool") is None and not os.environ.get("CI"),
    reason="promtool (Debian package prometheus) not installed",
)
def test_the_exposition_passes_promtool(client, api, make_program):
    program = make_program(name="promtool-qa")
    api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "lint"}, "wait": True},
        format="json",
    )
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape(client), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_can_require_a_bearer_token(client, settings):
    settings.DSPEX_METRICS_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200


def test_metrics_can_be_limited_to_addresses(client, settings):
    settings.DSPEX_METRICS_ALLOWED_IPS = ["10.9.9.9"]
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.9.9.9").status_code == 200


@pytest.mark.e2e
def test_web_and_worker_processes_appear_in_one_scrape(transactional_db, api, make_program, tmp_path):
    """prometheus_client multiprocess mode: gunicorn workers and a Celery worker share one scrape."""
    from executions.models import CognitiveExecution
    from tests.factories import KeyFactory

    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    program = make_program(name="multiproc-qa")
    token = KeyFactory(user=get_user_model().objects.get(username="op")).key
    worker = start_worker(env=env)
    port = free_port()
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "dspex_site/gunicorn_conf.py",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
        ],
        cwd=ROOT,
        env=process_env(**env),
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "web.log", "w"),  # noqa: SIM115 - read on failure
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=60)
        headers = {"Authorization": f"Token {token}"}
        url = f"http://127.0.0.1:{port}/api/v1/programs/{program.id}/execute/"
        sync = requests.post(
            url, json={"input": {"question": "web"}, "wait": True}, headers=headers, timeout=30
        )
        assert sync.status_code == 200, (tmp_path / "web.log").read_text()[-3000:]
        queued = requests.post(
            url, json={"input": {"question": "worker"}}, headers=headers, timeout=30
        ).json()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not CognitiveExecution.objects.get(id=queued["id"]).is_finished:
            time.sleep(0.2)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert sample(text, "dspex_execution_total", program="multiproc-qa", status="succeeded") == 2
        assert sample(text, "dspex_llm_request_total", provider="sim", status="ok") >= 2
    finally:
        web.terminate()
        web.wait(timeout=20)
        worker.stop()
