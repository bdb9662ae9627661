"""Streamed executions: `execute` and session turns with `"stream": true` (docs/streaming.md).

The request thread does everything that can refuse the run (`runner.start_now`: validation,
spend limits, rate limits, permissions, a session's claim), so a refusal is an ordinary JSON
error with its usual status before any byte of the stream. Then the stored, claimed execution
runs in a thread of its own (`runner.StartedRun.run` with a `StreamSink`: the one runner path,
the one LM path) while the response relays its events as server-sent events:

* `token` `{"step", "field", "chunk"}` as the LM writes an output field (DSPy's `streamify`
  with a `StreamListener` per output field of every predictor); a field that arrived without
  streaming (a cached LM answer, a kept execution answer) comes as one chunk when its step ends;
* `step` `{"step", "status": "started"|"finished"}`;
* `done` the finished execution (the `wait=true` body), or `error` `{"code", "detail",
  "execution"}` when it failed; the execution is stored with its trace before either is sent.

A client that disconnects does not stop the run: it finishes and is stored (cost and trace
kept, like a `wait=true` request whose client went away). `DSPEX_STREAM_KEEPALIVE_S` sends an
SSE comment while nothing happens, so proxies keep the connection open.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import dspy
from django.conf import settings
from django.db import connections
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse
from dspy.streaming import StreamListener, StreamResponse

from monitoring import telemetry

if TYPE_CHECKING:
    from executions.models import CognitiveExecution
    from executions.runner import Outcome, StartedRun
    from executions.tracing import TraceRecorder

logger = logging.getLogger(__name__)

_END = object()

# The OpenAPI description of a streamed answer (drf-spectacular), for every endpoint that streams.
SSE_RESPONSE = OpenApiResponse(
    OpenApiTypes.STR,
    description=(
        '`"stream": true`: server-sent events. `event: token` `{"step", "field", "chunk"}`; '
        '`event: step` `{"step", "status": "started"|"finished"}`; `event: done` the finished '
        'execution (the `wait=true` body); `event: error` `{"code", "detail", "execution"}` when it '
        "failed (stored failed, with its trace). Refusals (400, 402, 403, 404, 409, 429) are JSON "
        "answers before the stream starts. docs/streaming.md."
    ),
)


def sse(event: str, data: Any) -> bytes:
    """One server-sent event, its data as one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class StreamSink:
    """Where a streamed run's events go: a queue the response reads (thread-safe)."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.streamed: set[tuple[str | None, str]] = set()

    def token(self, step: str | None, field: str, chunk: str) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.streamed.add((step, field))
        self.events.put(("token", {"step": step, "field": field, "chunk": chunk}))

    def step(self, step: str, status: str) -> None:
        self.events.put(("step", {"step": step, "status": status}))

    def put(self, event: str, data: Any) -> None:
        self.events.put((event, data))

    def end(self) -> None:
        self.events.put(_END)


class _StreamingObserver:
    """The pipeline's step observer for a streamed run: the trace recorder's, plus `step` events
    and, at a step's end, its output fields that did not stream (a cached LM answer)."""

    def __init__(self, recorder: TraceRecorder, sink: StreamSink, fields: dict[str, list[str]]):
        self.recorder, self.sink, self.fields = recorder, sink, fields

    def step_started(self, name: str, module: str, inputs: dict) -> None:
        self.recorder.step_started(name, module, inputs)
        self.sink.step(name, "started")

    def step_finished(self, name: str, outputs: dict | None, error: BaseException | None) -> None:
        self.recorder.step_finished(name, outputs, error)
        if outputs is not None:
            for field in self.fields.get(name, ()):
                if (name, field) not in self.sink.streamed and outputs.get(field) is not None:
                    value = outputs[field]
                    self.sink.token(name, field, value if isinstance(value, str) else json.dumps(value))
        self.sink.step(name, "finished")


class _Call:
    """What `dspy.streamify` wraps: every listener names its predictor, so no lookup is made."""

    def __init__(self, run: Callable[[], dict]):
        self._run = run

    def named_predictors(self) -> list:
        return []

    def __call__(self, *args: Any, **kwargs: Any) -> dspy.Prediction:
        return dspy.Prediction(**self._run())


def run_streamed(
    program: Any, execution: CognitiveExecution, lm_for: Any, recorder: Any, sink: StreamSink
) -> dict:
    """`PipelineModule.run` through `dspy.streamify`, inside the runner's DSPy context (its
    callbacks, the trace recorder, are captured by `streamify`): the LM calls stream through the
    gateway (`GatewayEngine.stream`), each output field's chunks going to the sink as `token`s."""
    listeners = []
    fields: dict[str, list[str]] = {}
    for name, predictor in program.named_predictors():
        step = name.split(".")[0]
        for field in predictor.signature.output_fields:
            listeners.append(StreamListener(field, predict=predictor, predict_name=name, allow_reuse=True))
            fields.setdefault(step, []).append(field)
    observer = _StreamingObserver(recorder, sink, fields)
    outputs: dict = {}

    def run() -> dict:
        outputs.update(program.run(execution.input, execution.variables, lm_for=lm_for, observer=observer))
        return outputs

    streamed = dspy.streamify(
        _Call(run),
        stream_listeners=listeners,
        include_final_prediction_in_output_stream=True,
        async_streaming=False,
    )
    for value in streamed():
        if isinstance(value, StreamResponse) and value.chunk:
            sink.token(
                value.predict_name.split(".")[0] if value.predict_name else None,
                value.signature_field_name,
                value.chunk,
            )
    return outputs


Render = Callable[[str, Any], Iterator[bytes]]


def stream_response(
    started: StartedRun, body_for: Callable[[Outcome], dict], render: Render | None = None
) -> StreamingHttpResponse:
    """Run `started` in a thread of its own and answer its events as `text/event-stream`
    (`render(event, data)` gives the bytes of each: DSPex's events by default, the OpenAI
    endpoint's chunks for it)."""
    sink = StreamSink()
    program = started.program_name

    def work() -> None:
        try:
            outcome = started.run(sink)
            execution = outcome.execution
            if started.answered:  # a kept answer: its outputs at once (no step ran)
                for field, value in (execution.output or {}).items():
                    sink.token(None, field, value if isinstance(value, str) else json.dumps(value))
            if execution.status == execution.Status.SUCCEEDED:
                sink.put("done", body_for(outcome))
            else:
                error = execution.error or {}
                sink.put(
                    "error",
                    {
                        "code": error.get("type") or execution.status,
                        "detail": error.get("message") or f"The execution ended {execution.status}.",
                        "execution": str(execution.id),
                    },
                )
        except Exception as exc:  # never a hung stream
            logger.exception("streamed execution failed outside the runner")
            sink.put("error", {"code": "internal_error", "detail": type(exc).__name__})
        finally:
            sink.end()
            connections.close_all()  # this thread's own connections

    # Not a daemon: a worker shutting down lets the run finish and be stored.
    threading.Thread(target=work, name=f"stream-{started.execution.id}").start()
    return StreamingHttpResponse(
        relay(sink, program, render or _dspex_events), content_type="text/event-stream", headers=_HEADERS
    )


def _dspex_events(event: str, data: Any) -> Iterator[bytes]:
    yield sse(event, data)


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def relay(sink: StreamSink, program: str, render: Render) -> Iterator[bytes]:
    """The SSE bytes of a sink's events until its end; a keep-alive comment while idle. A client
    that disconnects closes this generator: the run goes on, counted `disconnected`."""
    keepalive = settings.DSPEX_STREAM_KEEPALIVE_S
    outcome = "disconnected"
    try:
        while True:
            try:
                item = sink.events.get(timeout=keepalive)
            except queue.Empty:
                yield b": keep-alive\n\n"
                continue
            if item is _END:
                return
            event, data = item
            if event in ("done", "error"):
                outcome = event
            yield from render(event, data)
    finally:
        telemetry.emit(
            "execution.stream",
            {} if sink.first_token_s is None else {"first_token_s": sink.first_token_s},
            {"program": program, "outcome": outcome},
        )


def follow(execution_id: Any) -> Iterator[bytes]:
    """`GET /executions/{id}/events/`: the execution's `status` events as its row changes, then
    `done` (the finished execution). Any execution, wherever it runs (a Celery worker in another
    process, a streamed or `wait=true` request): the row on the primary is polled every
    `DSPEX_STREAM_POLL_S` (0.5 s; one indexed query per follower per interval, no connection
    held in between), a keep-alive comment sent while nothing changes."""
    from executions.models import CognitiveExecution
    from executions.serializers import execution_data

    interval = settings.DSPEX_STREAM_POLL_S
    keepalive = settings.DSPEX_STREAM_KEEPALIVE_S
    rows = CognitiveExecution.objects.using("default")
    last, quiet = None, 0.0
    while True:
        status = rows.filter(id=execution_id).values_list("status", flat=True).first()
        if status is None:
            yield sse("error", {"code": "not_found", "detail": f"No execution {execution_id}."})
            return
        if status != last:
            last, quiet = status, 0.0
            yield sse("status", {"status": status})
        if status in CognitiveExecution.FINISHED:
            yield sse("done", execution_data(rows.get(id=execution_id)))
            connections["default"].close()
            return
        connections["default"].close()  # nothing held while waiting
        time.sleep(interval)
        quiet += interval
        if quiet >= keepalive:
            quiet = 0.0
            yield b": keep-alive\n\n"


def follow_response(execution_id: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(follow(execution_id), content_type="text/event-stream", headers=_HEADERS)
