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

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import dspy
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.http import HttpRequest, StreamingHttpResponse
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
_NOTHING = object()

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
    """Where a streamed run's events go: a queue the response reads (thread-safe). Under ASGI the
    response is a coroutine on the event loop (`arelay`): it `attach`es the loop, and each event
    put from the run's thread also wakes it (`call_soon_threadsafe`), so an open stream holds no
    thread of its own while it waits."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = queue.Queue()
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.streamed: set[tuple[str | None, str]] = set()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._signalled = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """The event set (on `loop`) when an item is put after the reader's last `drain`."""
        wakeup = asyncio.Event()
        self._waiter = (loop, wakeup)
        return wakeup

    def _put(self, item: Any) -> None:
        self.events.put(item)
        waiter = self._waiter
        # One wake-up of the reader's loop per drain, however many events arrive meanwhile.
        if waiter is not None and not self._signalled:
            self._signalled = True
            loop, wakeup = waiter
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is reading any more
                loop.call_soon_threadsafe(wakeup.set)

    def drain(self, first: Any = _NOTHING) -> list[Any]:
        """Every event put so far (the reader's side; after `first`, one it took already),
        consecutive `token`s of one field merged into one: a reader that fell behind catches up
        in one write, not one per token."""
        self._signalled = False  # before looking: an event put from now on wakes the reader again
        items: list[Any] = [] if first is _NOTHING else [first]
        while True:
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return items
            if item is not _END and item[0] == "token" and items and items[-1] is not _END:
                last = items[-1]
                if last[0] == "token" and (last[1]["step"], last[1]["field"]) == (
                    item[1]["step"],
                    item[1]["field"],
                ):
                    items[-1] = ("token", {**last[1], "chunk": last[1]["chunk"] + item[1]["chunk"]})
                    continue
            items.append(item)

    def token(self, step: str | None, field: str, chunk: str) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.streamed.add((step, field))
        self._put(("token", {"step": step, "field": field, "chunk": chunk}))

    def step(self, step: str, status: str) -> None:
        self._put(("step", {"step": step, "status": status}))

    def put(self, event: str, data: Any) -> None:
        self._put((event, data))

    def end(self) -> None:
        self._put(_END)


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


class _StreamLoop:
    """The event loop every streamed run of this process drives `dspy.streamify` on: one thread,
    started with the first stream (after a fork too). Its AnyIO worker threads run the programs
    and are kept between streams (AnyIO's pool), so a stream costs no event loop and no program
    thread of its own, and under load one turn of the loop serves the tokens of many streams
    (one `epoll` wait, not one per stream)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():
                loop = asyncio.new_event_loop()
                # A daemon: a process exiting first waits for the (non-daemon) run threads,
                # whose runs this loop finishes meanwhile.
                threading.Thread(target=loop.run_forever, name="dspex-streams", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop


class _Call:
    """What `dspy.streamify` wraps: every listener names its predictor, so no lookup is made.

    It is a coroutine function (so `streamify` does not wrap it in `dspy.asyncify`): the program
    runs in an AnyIO worker thread of the stream loop, limited by a limiter of its own.
    `dspy.asyncify` takes one process-wide `CapacityLimiter` (`async_max_workers`, 8) for every
    stream: a ninth concurrent stream would wait for one of the first eight to end (and, woken
    from another loop's thread when each stream had a loop of its own, never woke:
    `bench/streams.py` found streams hanging `running` forever). `dspy.settings` overrides go to
    the thread as `asyncify` passes them.
    """

    def __init__(self, run: Callable[[], dict]):
        self._run = run
        self.failure: tuple[BaseException, BaseException | None] | None = None

    def named_predictors(self) -> list:
        return []

    def restore_cause(self, exc: BaseException) -> None:
        """`streamify` re-raises the program's exception `from None`, which drops its cause (an
        `AdmissionError` behind DSPy's LM error: `llm.errors.classify` reads the chain): put it back."""
        if self.failure is not None and self.failure[0] is exc and exc.__cause__ is None:
            exc.__cause__ = self.failure[1]

    async def __call__(self, *args: Any, **kwargs: Any) -> dspy.Prediction:
        from dspy.dsp.utils.settings import thread_local_overrides

        parent = thread_local_overrides.get().copy()

        def call() -> dspy.Prediction:
            token = thread_local_overrides.set({**thread_local_overrides.get(), **parent})
            try:
                return dspy.Prediction(**self._run())
            except BaseException as exc:
                self.failure = (exc, exc.__cause__)
                raise
            finally:
                thread_local_overrides.reset(token)
                connections.close_all()  # a kept worker thread: nothing held until its next stream

        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))


def run_streamed(
    program: Any, execution: CognitiveExecution, lm_for: Any, recorder: Any, sink: StreamSink
) -> dict:
    """`PipelineModule.run` through `dspy.streamify`, inside the runner's DSPy context (its
    callbacks, the trace recorder, are captured by `streamify`): the LM calls stream through the
    gateway (`GatewayEngine.stream`), each output field's chunks going to the sink as `token`s.
    The calling (run) thread waits while the stream loop runs it, in this thread's context
    (`contextvars`: DSPy's settings, the run's traffic and owner)."""
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

    program_call = _Call(run)

    async def call(*args: Any, **kwargs: Any) -> dspy.Prediction:  # a coroutine function, for streamify
        return await program_call(*args, **kwargs)

    call.named_predictors = program_call.named_predictors  # type: ignore[attr-defined]
    # The async streamer, on the stream loop: DSPy's sync form (`async_streaming=False`) runs an
    # event loop of its own in one more thread per stream and hands every chunk across one more
    # queue.
    streamed = dspy.streamify(
        call,
        stream_listeners=listeners,
        include_final_prediction_in_output_stream=True,
        async_streaming=True,
    )

    async def relay_tokens() -> None:
        async for value in streamed():
            if isinstance(value, StreamResponse) and value.chunk:
                sink.token(
                    value.predict_name.split(".")[0] if value.predict_name else None,
                    value.signature_field_name,
                    value.chunk,
                )

    try:
        # The task is created in a copy of this thread's context (`call_soon_threadsafe`).
        asyncio.run_coroutine_threadsafe(relay_tokens(), _StreamLoop.get()).result()
    except BaseException as exc:
        program_call.restore_cause(exc)
        raise
    return outputs


Render = Callable[[str, Any], Iterator[bytes]]


def is_asgi(request: Any) -> bool:
    """Whether the request is served by the ASGI application (`dspex_site.asgi`, the web
    processes' default): its streams are then coroutines on the event loop (docs/streaming.md
    "Serving")."""
    return isinstance(getattr(request, "_request", request), ASGIRequest)


def _release_request_connections() -> None:
    """Under ASGI the request's thread is idle for the whole stream: its database connections go
    back (to the pool) now rather than when the stream ends."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block:
            conn.close()


def stream_response(
    request: HttpRequest,
    started: StartedRun,
    body_for: Callable[[Outcome], dict],
    render: Render | None = None,
) -> StreamingHttpResponse:
    """Run `started` in a thread of its own and answer its events as `text/event-stream`
    (`render(event, data)` gives the bytes of each: DSPex's events by default, the OpenAI
    endpoint's chunks for it): relayed by a coroutine under ASGI, by the request's thread
    under WSGI."""
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
    render = render or _dspex_events
    if is_asgi(request):
        _release_request_connections()
        return StreamingHttpResponse(
            arelay(sink, program, render), content_type="text/event-stream", headers=_HEADERS
        )
    return StreamingHttpResponse(
        relay(sink, program, render), content_type="text/event-stream", headers=_HEADERS
    )


def _dspex_events(event: str, data: Any) -> Iterator[bytes]:
    yield sse(event, data)


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def relay(sink: StreamSink, program: str, render: Render) -> Iterator[bytes]:
    """The SSE bytes of a sink's events until its end, each write all the events that arrived
    since the last one; a keep-alive comment while idle. A client that disconnects closes this
    generator: the run goes on, counted `disconnected`."""
    keepalive = settings.DSPEX_STREAM_KEEPALIVE_S
    outcome = "disconnected"
    try:
        while True:
            try:
                first = sink.events.get(timeout=keepalive)
            except queue.Empty:
                yield b": keep-alive\n\n"
                continue
            parts, ended, outcome = _render_all(sink.drain(first), render, outcome)
            if parts:
                yield b"".join(parts)
            if ended:
                return
    finally:
        _count_stream(sink, program, outcome)


async def arelay(sink: StreamSink, program: str, render: Render) -> AsyncIterator[bytes]:
    """`relay` as a coroutine on the ASGI event loop: it waits for the run's events without a
    thread of its own, woken once for all the events put since it last looked. A client that
    disconnects cancels it (Django's ASGI handler): the run goes on, counted `disconnected`."""
    keepalive = settings.DSPEX_STREAM_KEEPALIVE_S
    wakeup = sink.attach(asyncio.get_running_loop())
    outcome = "disconnected"
    try:
        while True:
            wakeup.clear()  # before draining: an event put after the drain sets it again
            items = sink.drain()
            if not items:
                try:
                    await asyncio.wait_for(wakeup.wait(), keepalive)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                continue
            parts, ended, outcome = _render_all(items, render, outcome)
            if parts:
                yield b"".join(parts)
            if ended:
                return
    finally:
        _count_stream(sink, program, outcome)


def _render_all(items: list[Any], render: Render, outcome: str) -> tuple[list[bytes], bool, str]:
    """(the bytes of `items` up to the end, whether the end was among them, the outcome so far)."""
    parts: list[bytes] = []
    for item in items:
        if item is _END:
            return parts, True, outcome
        event, data = item
        if event in ("done", "error"):
            outcome = event
        parts.extend(render(event, data))
    return parts, False, outcome


def _count_stream(sink: StreamSink, program: str, outcome: str) -> None:
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


async def afollow(execution_id: Any) -> AsyncIterator[bytes]:
    """`follow` as a coroutine on the ASGI event loop: each poll's query runs in a thread of the
    loop's pool (its connection given back at once), the wait in between holds no thread."""
    interval = settings.DSPEX_STREAM_POLL_S
    keepalive = settings.DSPEX_STREAM_KEEPALIVE_S
    last, quiet = None, 0.0
    while True:
        status, body = await _poll(execution_id)
        if status is None:
            yield sse("error", {"code": "not_found", "detail": f"No execution {execution_id}."})
            return
        if status != last:
            last, quiet = status, 0.0
            yield sse("status", {"status": status})
        if body is not None:
            yield sse("done", body)
            return
        await asyncio.sleep(interval)
        quiet += interval
        if quiet >= keepalive:
            quiet = 0.0
            yield b": keep-alive\n\n"


@sync_to_async(thread_sensitive=False)
def _poll(execution_id: Any) -> tuple[str | None, dict | None]:
    """(status, the finished execution's body or None) of one execution, read on the primary."""
    from executions.models import CognitiveExecution
    from executions.serializers import execution_data

    rows = CognitiveExecution.objects.using("default")
    try:
        status = rows.filter(id=execution_id).values_list("status", flat=True).first()
        if status in CognitiveExecution.FINISHED:
            return status, execution_data(rows.get(id=execution_id))
        return status, None
    finally:
        connections["default"].close()  # a pool thread: nothing kept between polls


def follow_response(request: HttpRequest, execution_id: Any) -> StreamingHttpResponse:
    if is_asgi(request):
        _release_request_connections()
        stream: Iterator[bytes] | AsyncIterator[bytes] = afollow(execution_id)
    else:
        stream = follow(execution_id)
    return StreamingHttpResponse(stream, content_type="text/event-stream", headers=_HEADERS)
