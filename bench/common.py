"""Small helpers shared by the benchmarks (they run outside pytest)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def server_env(lm_base_url: str, model: str = "openai/gpt-4o-mini", **extra: str) -> dict:
    """Environment of the DSPex processes a benchmark starts: production settings on plain http
    over loopback, no per-token throttle (a load benchmark, not a deployment), the LM at
    `lm_base_url` (simlm)."""
    return {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "0",
        "DSPEX_API_THROTTLE_RATE": "",
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or "bench-" + "k" * 50,
        "DSPEX_LM": model,
        "DSPEX_LM_API_BASE": lm_base_url,
        "DSPEX_LM_API_KEY": "sk-bench",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


def start_web(env: dict, workers: int = 1, threads: int = 4) -> tuple[subprocess.Popen, int]:
    """gunicorn (gthread) on a free loopback port, once it answers `/health/live`."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "dspex_site.wsgi", "-b", f"127.0.0.1:{port}"]
    command += ["-w", str(workers), "-k", "gthread", "--threads", str(threads)]
    web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=60)
    except RuntimeError:
        web.kill()
        raise
    return web, port
