"""The simulated provider with `api_key`: 401 in OpenAI's error shape to any other key."""

import requests

from llm.sim.server import serve_in_thread

BODY = {"model": "sim-default", "messages": [{"role": "user", "content": "hi"}]}


def test_only_the_servers_own_key_is_answered_and_the_key_is_never_shown():
    with serve_in_thread(api_key="k-right") as server:
        url = f"{server.url}/chat/completions"
        for headers in ({}, {"Authorization": "Bearer k-wrong"}, {"Authorization": "k-right"}):
            response = requests.post(url, json=BODY, headers=headers, timeout=5)
            assert response.status_code == 401
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
            assert "k-wrong" not in response.text and "k-right" not in response.text
        ok = requests.post(url, json=BODY, headers={"Authorization": "Bearer k-right"}, timeout=5)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]
        stats = server.stats()
        assert (stats["outcomes"].get("unauthorized"), stats["outcomes"].get("ok")) == (3, 1)
        assert "k-right" not in requests.get(f"http://127.0.0.1:{server.port}/_sim/config", timeout=5).text
