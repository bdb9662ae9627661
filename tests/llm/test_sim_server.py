"""The simulated provider over OpenAI-compatible HTTP: wire shape, DSPy's real lm15 path, faults.

Servers run in a thread of the test process (`serve_in_thread`); one test starts the
`simlm` management command in a subprocess. No database is needed.
"""

import asyncio
import base64
import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import

import dspy
import pytest

from llm.sim import SimEngine
from llm.sim.server import SimServer, make_server, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


class Typed(dspy.Signature):
    """Answer with every type."""

    question: str = dspy.InputField()
    category: Literal["billing", "bug"] = dspy.OutputField()
    count: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    urgent: bool = dspy.OutputField()


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    srv = serve_in_thread()
    yield srv
    srv.close()


@pytest.fixture
def sim(server: SimServer) -> Iterator[SimServer]:
    """The shared server with faults off, a fresh counter, stats and rate-limit window."""
    server.update_config(
        **{
            k: 0
            for k in (
                "latency_ms",
                "latency_jitter_ms",
                "spike_rate",
                "error_rate",
                "rate_limit_rpm",
                "rate_limit_rate",
                "timeout_rate",
                "malformed_rate",
            )
        },
        error_status=None,
        seed=0,
        require_auth=False,
        timeout_ms=60_000,
        retry_after_s=1,
    )
    server.reset()
    yield server


def http_lm(sim: SimServer, model: str = "openai/sim-default", **kwargs: Any) -> dspy.LM:
    return dspy.LM(model, api_base=sim.url, api_key="sk-test", num_retries=0, cache=False, **kwargs)


def call(sim: SimServer, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    payload = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


def chat(sim: SimServer, **body: Any) -> tuple:
    body.setdefault("model", "sim-default")
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    status, headers, data = call(sim, "POST", "/v1/chat/completions", body, {"Authorization": "Bearer sk-x"})
    return status, headers, json.loads(data) if data else None


# -- Wire format --------------------------------------------------------------------------------


def test_chat_completion_shape_and_n_choices(sim: SimServer) -> None:
    status, _, body = chat(sim, messages=[{"role": "user", "content": "What is 6 * 7?"}])
    assert status == 200
    assert (
        body["object"] == "chat.completion"
        and body["id"].startswith("chatcmpl-")
        and body["model"] == "sim-default"
    )
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "The result is 42.", "refusal": None}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert (
        usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        and usage["prompt_tokens"] > 0
    )

    _, _, many = chat(
        sim, n=3, temperature=1.0, messages=[{"role": "user", "content": "Tell me about otters"}]
    )
    assert [c["index"] for c in many["choices"]] == [0, 1, 2]
    _, _, again = chat(
        sim, n=3, temperature=1.0, messages=[{"role": "user", "content": "Tell me about otters"}]
    )
    assert [c["message"] for c in many["choices"]] == [c["message"] for c in again["choices"]]
    status, _, error = chat(sim, n=0)
    assert status == 400 and error["error"]["param"] == "n"
    status, _, error = chat(sim, messages="nope")
    assert status == 400 and error["error"]["type"] == "invalid_request_error"


def test_streaming_returns_sse_chunks(sim: SimServer) -> None:
    status, headers, data = call(
        sim,
        "POST",
        "/v1/chat/completions",
        {
            "model": "sim-default",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        },
    )
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [line[6:] for line in data.decode().split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "The result is 5."
    )
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_models_health_and_unknown_paths(sim: SimServer) -> None:
    status, _, data = call(sim, "GET", "/v1/models")
    assert status == 200 and "sim-default" in [m["id"] for m in json.loads(data)["data"]]
    status, _, data = call(sim, "GET", "/health")
    assert status == 200 and json.loads(data)["status"] == "ok"
    status, _, data = call(sim, "GET", "/v1/nothing-here")
    assert status == 404 and "error" in json.loads(data)


def test_keep_alive_reuses_one_connection(sim: SimServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    body = json.dumps({"model": "sim-default", "messages": [{"role": "user", "content": "hi"}]})
    sockets = set()
    for _ in range(5):
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Connection") != "close"
        response.read()
        sockets.add(id(conn.sock))
    conn.close()
    assert len(sockets) == 1


def test_embeddings_endpoint(sim: SimServer) -> None:
    texts = ["refund my card", "card refund please", "password reset"]
    status, _, data = call(
        sim, "POST", "/v1/embeddings", {"model": "sim-embedding", "input": texts, "dimensions": 64}
    )
    body = json.loads(data)
    assert status == 200 and body["object"] == "list" and body["usage"]["prompt_tokens"] > 0
    vectors = [d["embedding"] for d in body["data"]]
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(len(v) == 64 for v in vectors)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    _, _, data = call(
        sim,
        "POST",
        "/v1/embeddings",
        {"input": "refund my card", "encoding_format": "base64", "dimensions": 64},
    )
    packed = base64.b64decode(json.loads(data)["data"][0]["embedding"])
    assert struct.unpack("<64f", packed) == pytest.approx(vectors[0], abs=1e-6)


def test_any_bearer_is_accepted_and_auth_can_be_required(sim: SimServer) -> None:
    assert chat(sim)[0] == 200
    sim.update_config(require_auth=True)
    status, _, data = call(
        sim, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 401 and json.loads(data)["error"]["code"] == "invalid_api_key"
    assert chat(sim)[0] == 200  # chat() sends "Bearer sk-x"


# -- DSPy over HTTP (the real lm15 path) --------------------------------------------------------


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
@pytest.mark.parametrize("model", ["openai/sim-default", "openai/gpt-4o-mini"])
def test_dspy_modules_over_http(sim: SimServer, adapter: dspy.Adapter, model: str) -> None:
    # An unknown model gets no response_format from JSONAdapter; gpt-4o-mini gets a json_schema one.
    lm = http_lm(sim, model)
    with dspy.context(lm=lm, adapter=adapter):
        pred = dspy.ChainOfThought(Typed)(question="Billing problem: charged 3 * 5 dollars, urgent!")
    assert pred.category == "billing" and pred.count == 15 and pred.urgent is True
    assert isinstance(pred.tags, list) and pred.tags
    assert isinstance(pred.reasoning, str) and pred.reasoning
    assert lm.history[-1]["usage"]["prompt_tokens"] > 100
    assert sim.stats()["outcomes"] == {"ok": 1}


def test_dspy_streaming_over_http(sim: SimServer) -> None:
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener])

    async def run() -> list:
        with dspy.context(lm=http_lm(sim)):
            return [chunk async for chunk in program(question="What is 2 + 40?")]

    chunks = asyncio.run(run())
    assert "".join(c.chunk for c in chunks if isinstance(c, dspy.streaming.StreamResponse)).strip() == "42"
    assert chunks[-1].answer == "42"


def test_http_and_in_process_answers_agree(sim: SimServer) -> None:
    program = dspy.Predict("question -> answer")
    question = "Which team owns the quarterly report?"
    with dspy.context(lm=http_lm(sim)):
        over_http = program(question=question).answer
    in_process = dspy.LM("sim/default", engine=SimEngine(), num_retries=0, cache=False)
    with dspy.context(lm=in_process):
        assert program(question=question).answer == over_http


# -- Faults -------------------------------------------------------------------------------------


def test_rate_limit_surfaces_as_lm_rate_limit_error_with_retry_after(sim: SimServer) -> None:
    sim.update_config(rate_limit_rate=1.0, retry_after_s=7)
    with dspy.context(lm=http_lm(sim)), pytest.raises(dspy.LMRateLimitError) as info:
        dspy.Predict("question -> answer")(question="hi")
    assert info.value.retry_after == 7.0 and info.value.status == 429
    status, headers, body = chat(sim)
    assert status == 429 and headers["Retry-After"] == "7" and body["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_surface_as_lm_server_error(sim: SimServer, status: int) -> None:
    sim.update_config(error_rate=1.0, error_status=status)
    with dspy.context(lm=http_lm(sim)), pytest.raises(dspy.LMServerError) as info:
        dspy.Predict("question -> answer")(question="hi")
    assert info.value.status == status
    code, _, body = chat(sim)
    assert code == status and body["error"]["type"] == "server_error"


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_malformed_replies_raise_adapter_parse_error(sim: SimServer, adapter: dspy.Adapter) -> None:
    sim.update_config(malformed_rate=1.0)
    with dspy.context(lm=http_lm(sim), adapter=adapter), pytest.raises(dspy.AdapterParseError):
        dspy.Predict(Typed)(question="anything")
    # ChatAdapter falls back to JSONAdapter once: two malformed 200s.
    expected = 2 if type(adapter) is dspy.ChatAdapter else 1
    assert sim.stats()["outcomes"] == {"malformed": expected}


def test_timeouts_hang_until_the_client_gives_up(sim: SimServer) -> None:
    sim.update_config(timeout_rate=1.0, timeout_ms=3_000)
    started = time.perf_counter()
    with dspy.context(lm=http_lm(sim, timeout=0.3)), pytest.raises(dspy.LMTransportError):
        dspy.Predict("question -> answer")(question="hi")
    assert 0.25 < time.perf_counter() - started < 2.5
    assert sim.stats()["outcomes"] == {"timeout": 1}


def test_latency_is_added(sim: SimServer) -> None:
    sim.update_config(latency_ms=60)
    started = time.perf_counter()
    assert chat(sim)[0] == 200
    assert time.perf_counter() - started >= 0.06


def test_sliding_window_rate_limit(sim: SimServer) -> None:
    sim.update_config(rate_limit_rpm=3, rate_limit_window_s=1.0)
    assert [chat(sim)[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = chat(sim)
    assert status == 429 and headers["Retry-After"] == "1" and 0 < int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-limit-requests"] == "3" and body["error"]["type"] == "requests"
    time.sleep(1.05)  # the window slides: the first three requests have expired
    assert [chat(sim)[0] for _ in range(4)] == [200, 200, 200, 429]
    assert sim.stats()["outcomes"] == {"ok": 6, "rate_limited": 2}


def test_fault_choices_are_deterministic_per_seed(sim: SimServer) -> None:
    def outcomes(seed: int) -> list[int]:
        sim.update_config(seed=seed, error_rate=0.3, rate_limit_rate=0.2, malformed_rate=0.2)
        sim.reset()
        return [chat(sim)[0] for _ in range(40)]

    first = outcomes(7)
    assert first == outcomes(7)
    assert first != outcomes(8)
    assert 10 <= first.count(200) <= 35 and first.count(429) > 0 and set(first) & {500, 503}


def test_config_and_stats_endpoints(sim: SimServer) -> None:
    status, _, data = call(sim, "POST", "/_sim/config", {"error_rate": 0.25, "latency_ms": 5})
    assert status == 200 and json.loads(data)["error_rate"] == 0.25
    _, _, data = call(sim, "GET", "/_sim/config")
    config = json.loads(data)
    assert config["latency_ms"] == 5 and config["timeout_ms"] == 60_000
    assert call(sim, "POST", "/_sim/config", {"no_such_knob": 1})[0] == 400
    assert call(sim, "POST", "/_sim/config", {"error_rate": 2})[0] == 400
    assert sim.config.error_rate == 0.25  # a rejected update changes nothing
    sim.update_config(error_rate=0, latency_ms=0)
    chat(sim)
    call(sim, "POST", "/v1/embeddings", {"input": "x"})
    _, _, data = call(sim, "GET", "/_sim/stats")
    stats = json.loads(data)
    assert stats["requests"] == 2 and stats["endpoints"] == {"chat": 1, "embeddings": 1}
    assert stats["outcomes"] == {"ok": 2}
    assert call(sim, "POST", "/_sim/reset")[0] == 200 and sim.stats()["requests"] == 0


def test_marks_count_chat_requests_per_name(sim: SimServer) -> None:
    """`[mark:<name>]` in a chat body counts that request under the name, once per request,
    whatever its outcome; embeddings and unmarked requests are not counted; reset forgets."""
    marked = [{"role": "user", "content": "q [mark:run-1] again [mark:run-1] and [mark:run.2]"}]
    chat(sim, messages=marked)
    chat(sim, messages=[{"role": "user", "content": "[mark:run-1]"}])
    chat(sim)
    sim.update_config(error_rate=1.0)
    assert chat(sim, messages=[{"role": "user", "content": "[mark:run.2]"}])[0] >= 500
    call(sim, "POST", "/v1/embeddings", {"input": "[mark:emb]"})
    assert sim.stats()["marks"] == {"run-1": 2, "run.2": 2}
    sim.reset()
    assert sim.stats()["marks"] == {}


def test_make_server_validates_config() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        make_server(error_rate=1.5)
    with pytest.raises(ValueError, match="unknown"):
        make_server(bogus=1)


# -- The management command ---------------------------------------------------------------------

_RUN_COMMAND = """
import django
from django.conf import settings
settings.configure()
django.setup()
from django.core.management import call_command
from llm.management.commands.simlm import Command
call_command(Command(), "--host", "127.0.0.1", "--port", "0", "--error-rate", "1", "--seed", "3")
"""


def test_simlm_command_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN_COMMAND],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("Simulated LLM provider (sim) listening on http://127.0.0.1:"), line
        assert line.endswith("/v1")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(
            "POST", "/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}]})
        )
        assert conn.getresponse().status in (500, 503)  # --error-rate 1 reached the server
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in out
