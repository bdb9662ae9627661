"""The in-process DSPy engines (`SimEngine`, `AsyncSimEngine`) and `sim_lm`: a DSPy LM answered
by the simulator, with lm15 usage (tokens) on every response so pricing and budgets apply."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

from llm.sim.chat import simulate_chat

# ---------------------------------------------------------------------------------------------
# DSPy engines


class SimEngine:
    """DSPy 3.4.1 engine answering `sim/<name>` models in-process (see the module docstring).

    `structured_output` says which `response_format` JSONAdapter should send: "json_schema"
    (like gpt-4o-mini: DSPy sends the signature's JSON schema), "json_object" or "none" (DSPy
    sends no response_format). The simulator answers all three. `latency_ms` adds a sleep per
    call, for load tests of the in-process path.
    """

    supports_function_calling = False
    supports_reasoning = False

    def __init__(self, *, structured_output: str = "json_schema", latency_ms: float = 0.0):
        if structured_output not in ("json_schema", "json_object", "none"):
            raise ValueError("structured_output must be 'json_schema', 'json_object' or 'none'")
        self.structured_output = structured_output
        self.latency_ms = float(latency_ms)

    @property
    def supports_response_schema(self) -> bool:
        return self.structured_output == "json_schema"

    @property
    def supported_params(self) -> frozenset[str]:
        params = {
            "temperature",
            "max_tokens",
            "max_completion_tokens",
            "top_p",
            "stop",
            "seed",
            "n",
            "stream",
        }
        if self.structured_output != "none":
            params.add("response_format")
        return frozenset(params)

    def complete(self, request: Any) -> Any:
        from dspy.clients.engines.base import validate_request

        validate_request(request)
        if self.latency_ms > 0:
            time.sleep(self.latency_ms / 1000.0)
        return _response_for(request)

    def stream(self, request: Any) -> Iterator[Any]:
        return _line_events(self.complete(request))

    def close(self) -> None:
        """Nothing to release: the simulator holds no connections."""

    def dump_state(self) -> dict:
        return {"structured_output": self.structured_output, "latency_ms": self.latency_ms}

    @classmethod
    def load_state(cls, state: dict) -> SimEngine:
        return cls(**state)


class AsyncSimEngine:
    """Async counterpart of `SimEngine` for `dspy.LM(..., async_engine=...)` and `acall`."""

    def __init__(self, *, structured_output: str = "json_schema", latency_ms: float = 0.0):
        self.sync = SimEngine(structured_output=structured_output, latency_ms=0.0)
        self.latency_ms = float(latency_ms)

    async def complete(self, request: Any) -> Any:
        import asyncio

        from dspy.clients.engines.base import validate_request

        validate_request(request)
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        return _response_for(request)

    async def stream(self, request: Any) -> Any:
        for event in _line_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        """Nothing to release."""

    def dump_state(self) -> dict:
        return {"structured_output": self.sync.structured_output, "latency_ms": self.latency_ms}

    @classmethod
    def load_state(cls, state: dict) -> AsyncSimEngine:
        return cls(**state)


def _line_events(response: Any) -> Iterator[Any]:
    """Stream events of a finished response, its text split into one delta per line.

    Line-sized deltas let DSPy's stream listeners see field markers arrive piece by piece.
    """
    from dspy.lm15 import StreamDeltaEvent, TextDelta, response_to_events

    for event in response_to_events(response):
        delta = getattr(event, "delta", None)
        if isinstance(delta, TextDelta) and "\n" in delta.text:
            for line in delta.text.splitlines(True):
                yield StreamDeltaEvent(delta=TextDelta(text=line, part_index=delta.part_index))
        else:
            yield event


def request_messages(request: Any) -> list[dict]:
    """OpenAI-style messages of a `dspy.lm15.Request` (system first, text parts only)."""
    messages = []
    system = request.system
    if system is not None:
        text = system if isinstance(system, str) else "".join(getattr(p, "text", "") or "" for p in system)
        messages.append({"role": "system", "content": text})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def _request_params(request: Any) -> dict:
    config = request.config
    params: dict[str, Any] = {}
    if config.temperature is not None:
        params["temperature"] = config.temperature
    if config.max_tokens is not None:
        params["max_tokens"] = config.max_tokens
    if config.response_format is not None:
        params["response_format"] = config.response_format
    if config.seed is not None:
        params["seed"] = config.seed
    return params


def _response_for(request: Any) -> Any:
    from dspy.lm15 import Message, Response, TextPart, Usage

    reply = simulate_chat(request.model, request_messages(request), _request_params(request))
    return Response(
        id="simcmpl-" + hashlib.sha256(reply.content.encode()).hexdigest()[:24],
        model=request.model,
        message=Message.assistant([TextPart(reply.content)]),
        finish_reason=reply.finish_reason,
        usage=Usage(
            input_tokens=reply.prompt_tokens,
            output_tokens=reply.completion_tokens,
            total_tokens=reply.total_tokens,
        ),
    )


def sim_lm(model: str = "sim/default", *, structured_output: str = "json_schema", **kwargs: Any) -> Any:
    """A `dspy.LM` for a simulated model (in-process, sync and async). Extra kwargs go to dspy.LM."""
    import dspy

    kwargs.setdefault("num_retries", 0)
    return dspy.LM(
        model,
        engine=SimEngine(structured_output=structured_output),
        async_engine=AsyncSimEngine(structured_output=structured_output),
        **kwargs,
    )
