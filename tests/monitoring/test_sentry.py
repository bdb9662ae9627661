"""Sentry: a failing task's event reaches a (local) Sentry receiver, tagged and scrubbed."""

import gzip
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitoring.sentry import before_send
from tests.support import start_worker

FAKE_KEY = "sk-fake-provider-key-0123456789"


class Receiver(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            raw = gzip.decompress(raw)
        elif encoding == "deflate":
            raw = zlib.decompress(raw)
        Receiver.bodies.append(raw)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def events(bodies: list[bytes]) -> list[dict]:
    found = []
    for body in bodies:
        for line in body.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "exception" in item:
                found.append(item)
    return found


@pytest.mark.e2e
def test_a_failing_task_reaches_sentry_tagged_and_without_secrets(transactional_db):
    Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dsn = f"http://publickey@127.0.0.1:{server.server_port}/42"
    worker = start_worker(
        queues="default",
        env={
            "SENTRY_DSN": dsn,
            "DSPEX_LM_API_KEY": FAKE_KEY,
            "DSPEX_ENVIRONMENT": "ci",
            "DSPEX_RELEASE": "dspex@test",
        },
    )
    try:
        from monitoring.tasks import selftest_error

        selftest_error.apply_async(args=[f"marker {FAKE_KEY}"], queue="default")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not events(Receiver.bodies):
            time.sleep(0.2)
    finally:
        worker.stop()
        server.shutdown()
    found = events(Receiver.bodies)
    assert found, "no event reached the Sentry receiver"
    event = next(e for e in found if "SentrySelfTestError" in json.dumps(e["exception"]))
    assert event["tags"]["app"] == "dspex"
    assert event["environment"] == "ci" and event["release"] == "dspex@test"
    everything = b"".join(Receiver.bodies).decode(errors="replace")
    assert FAKE_KEY not in everything
    assert "[scrubbed]" in everything


def test_prompts_are_scrubbed_unless_allowed(monkeypatch):
    event = {
        "request": {"data": {"input": {"question": "private"}}},
        "extra": {"messages": [{"role": "user", "content": "private prompt"}], "note": f"key {FAKE_KEY}"},
    }
    monkeypatch.setenv("DSPEX_LM_API_KEY", FAKE_KEY)
    scrubbed = json.dumps(before_send(json.loads(json.dumps(event)), {}))
    assert "private" not in scrubbed and FAKE_KEY not in scrubbed
    monkeypatch.setenv("DSPEX_SENTRY_SEND_PROMPTS", "1")
    allowed = json.dumps(before_send(json.loads(json.dumps(event)), {}))
    assert "private prompt" in allowed and FAKE_KEY not in allowed
