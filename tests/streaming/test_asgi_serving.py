"""Streams through the web processes' own serving model (ASGI: `gunicorn -c
dspex_site/gunicorn_conf.py`, uvicorn workers; docs/streaming.md "Serving"): the relay and the
follower run as coroutines on the event loop, so a dozen open streams in one process (more than
DSPy's 8 `async_max_workers`) all finish while an ordinary request is answered at once, a client
that disconnects leaves a finished execution, and `/events/` follows an execution."""

import concurrent.futures
import subprocess
import sys
import time

import pytest
import requests

from executions.models import CognitiveExecution
from tests.factories import ProgramFactory
from tests.streaming.conftest import events
from tests.support import ROOT, free_port, process_env, wait_http

QA = {"signature": "question -> answer"}


@pytest.fixture
def asgi_web(transactional_db, http_provider, tmp_path):
    port = free_port()
    env = process_env(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="k" * 60,
        DJANGO_HTTPS="0",
        DSPEX_WEB_SERVER="asgi",
        DSPEX_HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        DSPEX_LM="openai/sim-default",
        DSPEX_LM_API_BASE=http_provider.base_url,
        DSPEX_LM_API_KEY="sk-test-not-a-real-key",
    )
    log = (tmp_path / "web.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "dspex_site/gunicorn_conf.py"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.e2e
def test_streams_are_relayed_from_the_event_loop_without_starving_requests(asgi_web, http_provider, key):
    http_provider.configure(token_delay_ms=40)
    program = ProgramFactory(name="qa", pipeline=QA)
    headers = {"Authorization": f"Bearer {key.key}"}
    url = f"{asgi_web}/api/v1/programs/{program.id}/execute/"

    def one(i):
        body = {
            "input": {"question": f"Which river flows past the old mill called {'ABCDEFGHIJKL'[i]}?"},
            "stream": True,
            "cache": False,
        }
        with requests.post(url, json=body, headers=headers, stream=True, timeout=60) as response:
            assert response.status_code == 200 and response.headers["Content-Type"].startswith(
                "text/event-stream"
            )
            seen = list(events(response))
        return seen

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        time.sleep(1.0)  # the streams are open
        started = time.perf_counter()
        ordinary = requests.get(f"{asgi_web}/api/v1/programs/", headers=headers, timeout=30)
        ordinary_s = time.perf_counter() - started
        results = [f.result(timeout=120) for f in futures]
    assert ordinary.status_code == 200 and ordinary_s < 5
    for seen in results:
        tokens = [data for event, data in seen if event == "token"]
        assert len(tokens) >= 2 and seen[-1][0] == "done", seen[-3:]
        assert "".join(t["chunk"] for t in tokens).strip() == seen[-1][1]["output"]["answer"]
    assert CognitiveExecution.objects.filter(status="succeeded").count() == 12

    finished = results[0][-1][1]["id"]
    with requests.get(
        f"{asgi_web}/api/v1/executions/{finished}/events/", headers=headers, stream=True, timeout=30
    ) as follow:
        followed = list(events(follow))
    assert followed[0] == ("status", {"status": "succeeded"}) and followed[-1][0] == "done"
    assert followed[-1][1]["id"] == finished


@pytest.mark.e2e
def test_a_client_that_disconnects_from_the_asgi_server_leaves_a_finished_execution(
    asgi_web, http_provider, key
):
    http_provider.configure(token_delay_ms=50)
    program = ProgramFactory(name="qa", pipeline=QA)
    response = requests.post(
        f"{asgi_web}/api/v1/programs/{program.id}/execute/",
        json={"input": {"question": "What is the capital of France?"}, "stream": True},
        headers={"Authorization": f"Bearer {key.key}"},
        stream=True,
        timeout=30,
    )
    for event, _data in events(response):
        if event == "token":
            break
    response.close()
    deadline = time.monotonic() + 20
    execution = CognitiveExecution.objects.get()
    while execution.status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        execution.refresh_from_db()
    assert execution.status == "succeeded" and execution.output["answer"]


def test_the_asgi_handler_runs_middleware_and_view_in_one_hop_to_a_kept_view_thread(db, monkeypatch):
    """`dspex_site.asgi.OneHopASGIHandler`: the whole middleware chain and the view run in one of
    its long-lived view threads, synchronously: never back on the event loop (no `async_to_sync`
    inside a request), never in a thread made for the request."""
    import asyncio
    import threading

    from asgiref.sync import AsyncToSync
    from asgiref.testing import ApplicationCommunicator

    from dspex_site.asgi_handler import OneHopASGIHandler
    from monitoring.middleware import RequestContextMiddleware

    seen: list[str] = []
    real = RequestContextMiddleware.__call__

    def recording(self, request):
        seen.append(threading.current_thread().name)
        return real(self, request)

    back_to_loop: list[object] = []
    real_async_to_sync = AsyncToSync.__call__

    def counting(self, *args, **kwargs):
        back_to_loop.append(self)
        return real_async_to_sync(self, *args, **kwargs)

    monkeypatch.setattr(RequestContextMiddleware, "__call__", recording)
    monkeypatch.setattr(AsyncToSync, "__call__", counting)
    handler = OneHopASGIHandler(2)

    async def get(path: str) -> int:
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 5000),
            "server": ("testserver", 80),
            "scheme": "http",
        }
        app = ApplicationCommunicator(handler, scope)
        await app.send_input({"type": "http.request", "body": b""})
        start = await app.receive_output(10)
        await app.receive_output(10)  # the body
        await app.wait(10)
        return int(start["status"])

    async def six() -> list[int]:
        return [await get("/health/live") for _ in range(6)]

    assert asyncio.run(six()) == [200] * 6
    assert len(seen) == 6 and all(name.startswith("view") for name in seen), seen
    assert len(set(seen)) <= 2  # kept threads, not one per request
    assert back_to_loop == []
