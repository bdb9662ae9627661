"""The provider key appears nowhere: run executions (sync over the API and queued on a worker)
with a known fake key, then scan every database table, Redis, captured logs (ours and the
worker's), Sentry events, every admin page and the API responses for it."""

import logging
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from django.contrib import admin
from django.core.cache import caches
from django.db import connection
from django.urls import reverse

from executions.models import CognitiveExecution
from llm import gateway
from tests.monitoring.test_sentry import Receiver, events
from tests.support import process_env, sim_env, stop, wait_for

ROOT = Path(__file__).resolve().parents[2]
KEY = f"sk-canary-{uuid.uuid4().hex}"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def table_hits(needle: str) -> list[str]:
    """Tables with a row whose text form contains `needle` (every table, every column)."""
    hits = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            quoted = connection.ops.quote_name(table)
            cursor.execute(f"SELECT count(*) FROM {quoted} t WHERE t::text LIKE %s", [f"%{needle}%"])  # noqa: S608
            if cursor.fetchone()[0]:
                hits.append(table)
    return hits


def redis_hits(needle: str) -> list[str]:
    client = caches["default"].client.get_client(write=False)
    found = []
    for key in client.scan_iter(count=1000):
        dumped = client.dump(key) or b""
        if needle.encode() in dumped or needle.encode() in key:
            found.append(key.decode(errors="replace"))
    return found


def start_logged_worker(env: dict, log: Path) -> subprocess.Popen:
    from dspex_site.celery import app

    name = f"secrets-{uuid.uuid4().hex[:8]}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "dspex_site", "worker", "-l", "DEBUG"),
                *("-Q", "llm_calls,priority,default", "-P", "threads", "-c", "2", "-n", f"{name}@%h"),
                *("--without-mingle", "--without-gossip"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    import socket

    wait_for(
        lambda: app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5),
        60,
        "the worker to answer a ping",
    )
    return proc


def test_the_provider_key_appears_nowhere(
    transactional_db, api, client, operator, make_program, http_provider, settings, caplog, capfd
):
    settings.DSPEX_LM_API_KEY = KEY
    gateway.reset()
    caplog.set_level(logging.DEBUG)
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.bodies = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    log = Path(tempfile.mkdtemp(prefix="dspex-secrets-")) / "worker.log"
    env = process_env(
        **sim_env(http_provider, DSPEX_LM_API_KEY=KEY, LOG_LEVEL="DEBUG"),
        SENTRY_DSN=f"http://publickey@127.0.0.1:{receiver.server_port}/1",
    )
    worker = start_logged_worker(env, log)
    try:
        program = make_program()
        url = f"/api/v1/programs/{program.id}/execute/"
        ok = api.post(url, {"input": {"question": "sync?"}, "wait": True}, format="json")
        assert ok.status_code == 200, ok.json()
        http_provider.configure(error_rate=1.0)
        failed = api.post(url, {"input": {"question": "failing?"}, "wait": True}, format="json")
        assert failed.json()["status"] == "failed"
        http_provider.configure(error_rate=0)
        queued = api.post(url, {"input": {"question": "queued?"}}, format="json").json()["id"]
        wait_for(
            lambda: CognitiveExecution.objects.filter(id=queued, status="succeeded").exists(),
            60,
            "queued run",
        )
        from monitoring.tasks import selftest_error

        selftest_error.apply_async(
            args=["secrets scan"], queue="default"
        )  # an event from a process holding the key
        wait_for(lambda: events(Receiver.bodies), 30, "a Sentry event from the worker")
    finally:
        stop(worker)
        receiver.shutdown()

    responses = {
        "executions": api.get("/api/v1/executions/").content,
        "execution": api.get(f"/api/v1/executions/{queued}/").content,
        "providers": api.get("/api/v1/providers/").content,
        "programs": api.get("/api/v1/programs/").content,
        "cache stats": api.get("/api/v1/cache/stats/").content,
        "schema": api.get("/api/schema/").content,
        "sync run": ok.content + failed.content,
    }
    client.force_login(operator)
    pages = [
        reverse(f"admin:{m._meta.app_label}_{m._meta.model_name}_changelist") for m in admin.site._registry
    ]
    pages += [
        reverse("admin:executions_cognitiveexecution_change", args=[queued]),
        "/admin/providers/",
        "/admin/",
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        responses[page] = response.content

    captured = capfd.readouterr()
    assert events(Receiver.bodies)
    assert KEY not in caplog.text
    assert KEY not in captured.out + captured.err
    assert KEY.encode() not in log.read_bytes(), "worker logs"
    assert not [b for b in Receiver.bodies if KEY.encode() in b], "Sentry events"
    assert not [name for name, body in responses.items() if KEY.encode() in body]
    assert table_hits(KEY) == []
    assert redis_hits(KEY) == []
    assert os.environ.get("DSPEX_LM_API_KEY") != KEY  # the key only ever lived in settings/env of the worker
