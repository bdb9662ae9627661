"""Production settings: refuse to start without a secret key; serve correctly under gunicorn."""

import os
import subprocess
import sys
import time

import pytest
import requests

from bench.common import free_port, wait_http
from tests.support import ROOT


def django_check(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def production_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env.update({"DJANGO_DEBUG": "0", "DJANGO_SETTINGS_MODULE": "dspex_site.settings", **extra})
    return env


def test_production_refuses_to_start_without_a_secret_key():
    result = django_check(production_env())
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr


def test_secret_key_can_come_from_a_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("x" * 60)
    result = django_check(production_env(DJANGO_SECRET_KEY_FILE=str(key_file)))
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["asgi", "wsgi"])
def test_gunicorn_serves_api_admin_and_static_files_with_debug_off(tmp_path, transactional_db, server):
    """Through the deployments' own config (`gunicorn -c dspex_site/gunicorn_conf.py`: `make run`,
    the Procfile, docker), in both serving models (DSPEX_WEB_SERVER, docs/streaming.md "Serving")."""
    from django.db import connection

    port = free_port()
    static_root = tmp_path / "static"
    env = production_env(
        DJANGO_SECRET_KEY="k" * 60,
        DATABASE_URL=f"postgres://localhost:5432/{connection.settings_dict['NAME']}",
        DSPEX_STATIC_ROOT=str(static_root),
        DJANGO_HTTPS="0",  # plain http on 127.0.0.1, as `make run` serves it (no TLS redirect)
        DSPEX_WEB_SERVER=server,
        DSPEX_HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
    )
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "dspex_site/gunicorn_conf.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=30)
        base = f"http://127.0.0.1:{port}"
        assert requests.get(f"{base}/api/v1/programs/", timeout=5).status_code == 401
        login = requests.get(f"{base}/admin/login/", timeout=5)
        assert login.status_code == 200 and "csrfmiddlewaretoken" in login.text
        css = next(p for p in static_root.rglob("base*.css") if "admin" in str(p))
        static = requests.get(f"{base}/static/{css.relative_to(static_root)}", timeout=5)
        assert static.status_code == 200 and "text/css" in static.headers["Content-Type"]
        ready = requests.get(f"{base}/health/ready", timeout=5).json()
        assert ready["checks"]["database"]["status"] == "ok", ready["checks"]["database"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        time.sleep(0.1)
