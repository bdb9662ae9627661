"""The `llm.sim` package: its public names, the pure fault decision, and unknown paths."""

import http.client
import json
from collections.abc import Iterator

import pytest

import llm.sim
from llm.sim.faults import FaultConfig, decide
from llm.sim.server import SimServer, serve_in_thread


def test_the_package_exports_the_simulator_from_its_modules() -> None:
    from llm.sim.chat import simulate_chat
    from llm.sim.engines import SimEngine

    assert llm.sim.simulate_chat is simulate_chat and llm.sim.SimEngine is SimEngine
    assert set(llm.sim.__all__) == {
        "AsyncSimEngine",
        "SimEngine",
        "SimReply",
        "count_tokens",
        "safe_eval",
        "sim_lm",
        "simulate_chat",
        "simulate_embeddings",
    }


def never_limited(limit: int, window_s: float) -> float | None:
    return None


def test_the_fault_decision_is_a_pure_function_of_seed_and_counter() -> None:
    config = FaultConfig(error_rate=0.3, timeout_rate=0.2, malformed_rate=0.2, seed=7)
    first = [decide(config, index, never_limited) for index in range(200)]
    assert first == [decide(config, index, never_limited) for index in range(200)]
    kinds = {decision.kind for decision in first}
    assert {"ok", "error", "timeout", "malformed"} <= kinds
    other_seed = [decide(FaultConfig(**{**config.__dict__, "seed": 8}), i, never_limited) for i in range(200)]
    assert other_seed != first


def test_the_sliding_window_decides_rate_limits() -> None:
    decision = decide(FaultConfig(rate_limit_rpm=1), 0, lambda limit, window_s: 2.5)
    assert (decision.kind, decision.status, decision.retry_after) == ("rate_limited", 429, 2.5)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    srv = serve_in_thread()
    yield srv
    srv.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_paths_answer_404_with_an_openai_error(server: SimServer, method: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request(method, "/v1/nowhere", body=b"{}" if method == "POST" else None)
    response = connection.getresponse()
    assert response.status == 404
    assert json.loads(response.read()) == {
        "error": {
            "message": "Unknown path /nowhere",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }
