"""Fixtures of the streaming tests: a live server, a key, and an SSE reader over real HTTP."""

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.factories import KeyFactory, OperatorFactory


@pytest.fixture
def key(transactional_db: None) -> Any:
    return KeyFactory(user=OperatorFactory(username="streamer"))


@pytest.fixture
def post(live_server: Any, http_provider: Any, key: Any) -> Any:
    """`post(path, body)`: a streamed POST to the live server with the key (requests.Response)."""

    def send(path: str, body: dict, **kwargs: Any) -> requests.Response:
        return requests.post(
            f"{live_server.url}{path}",
            json=body,
            headers={"Authorization": f"Bearer {key.key}"},
            stream=True,
            timeout=30,
            **kwargs,
        )

    return send


def events(response: requests.Response) -> Iterator[tuple[str, Any]]:
    """The (event, parsed data) pairs of a server-sent event stream, as they arrive."""
    event, data = "message", []
    for raw in response.iter_lines(chunk_size=1, decode_unicode=True):  # each event as it comes
        if raw == "":
            if data:
                text = "\n".join(data)
                yield event, (text if text == "[DONE]" else json.loads(text))
            event, data = "message", []
        elif raw.startswith(":"):
            continue
        elif raw.startswith("event:"):
            event = raw[6:].strip()
        elif raw.startswith("data:"):
            data.append(raw[5:].strip())
