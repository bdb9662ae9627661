"""The gateway every provider call goes through: chat (DSPy LM calls) and embeddings.

It composes the LM path's parts (`docs/architecture.md`): routing (`llm.routing`), admission
(`llm.resilience`), budgets (`llm.budgets`), cost (`llm.pricing`), the per-call log
(`llm.calllog`) and telemetry. They never import the gateway; only it imports them.

`lm_for(config)` builds the `dspy.LM` a program step uses. Its engine is a `GatewayEngine`
wrapping the provider's real engine (DSPy's native lm15 engine over HTTP, or the in-process
simulated provider for `sim/<name>` models). DSPy consults its cache (our Redis cache, see
`caching.llm_cache`) before the engine, so everything here sees only real provider calls:
admission (rate limits, bulkheads, breakers), latency, usage, cost and telemetry.

Each provider call is reported to the `CallLog` of the LM call in progress on this thread,
which is how a trace gets usage, cost and latency without reading DSPy's history lists
(history is disabled during executions: in a long-lived worker it only grows).

`embed(model, texts)` is the same for embeddings (the embedding cache, `caching.embeddings`,
sits in front of it): budget, admission, cost, telemetry, and an `on_embedding(call, texts)`
report to the DSPy callbacks in effect that have one (the execution's trace recorder).
"""

import contextlib
import functools
import importlib
import random
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import dspy
from django.conf import settings
from dspy.lm15 import Request, Response

from caching.llm_cache import install_llm_cache
from dspex_site import db
from llm import budgets, calllog, embedders, pricing, quotas, resilience, routing
from llm.calllog import ProviderCall
from llm.errors import CONTEXT_WINDOW, TRANSIENT, classify, fallback_reason
from llm.routing import SAMPLING_KEYS, Route, embedding_key, embedding_route_for, lm_config
from monitoring import telemetry


@functools.cache
def _proxies_configured() -> bool:
    return bool(urllib.request.getproxies())


@functools.cache
def _provider_engine(provider: str) -> Any:
    """The real engine of one registered provider, one per process (it owns the connection pool),
    built with that provider's key and base URL only: two providers never share a server or a key."""
    registered = routing.providers()[provider]
    if registered.in_process:
        from llm.sim.engines import SimEngine  # a production process never needs the simulator

        return SimEngine()
    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import RouterConfig

    # DSPy vendors lm15 with a py.typed marker; imported by name so mypy does not take `dspy`
    # for a typed (and then attribute-less) package.
    StdlibTransport = importlib.import_module("dspy._vendor.lm15.transports").StdlibTransport

    # DSPEX_LM_TIMEOUT_S unless the provider's timeout_s or limits say otherwise.
    timeout = resilience.policy_for(provider).call_timeout_s
    # lm15's key for OpenAI-compatible chat is "openai-chat": a base URL registered under
    # "openai" is ignored and the call silently goes to api.openai.com (docs/dspy.md).
    key_name = registered.lm15_key or "openai-chat"
    config = RouterConfig(
        env={},  # never pick credentials or endpoints up from the process environment implicitly
        api_keys={key_name: registered.api_key() or "not-set"},
        base_urls={key_name: registered.api_base} if registered.api_base else None,
        transport=StdlibTransport(
            connect_timeout=min(5.0, timeout),
            read_timeout=timeout,
            write_timeout=timeout,
            pool_timeout=timeout,
            # lm15's own default is 100: under ASGI one process holds hundreds of open streams.
            max_connections=settings.DSPEX_LM_MAX_CONNECTIONS,
            # lm15 reads the proxy variables (urllib's getproxies: the whole environment) on every
            # request, ~0.1-0.4 ms each; they are read once here instead. A process started
            # without HTTP(S)_PROXY/ALL_PROXY connects directly; one started with them keeps
            # lm15's per-request handling (NO_PROXY included).
            trust_env=_proxies_configured(),
        ),
    )
    return LM15Engine(config, model_type="chat")


@functools.lru_cache(maxsize=128)
def _capabilities(route: Route) -> tuple[bool, bool, bool, frozenset]:
    """What the routed model supports, as DSPy would see it without our wrapper.

    DSPy asks a custom engine for these hints (JSONAdapter picks `response_format` from them);
    answering them keeps structured output working through the gateway. Offline: the native
    path reads DSPy's bundled model metadata (by the provider's kind and the model it is sent),
    never the network.
    """
    if route.lm15_provider is not None:
        from dspy.clients.capabilities import capabilities

        try:
            native = f"{route.lm15_provider}/{route.wire_model}"
            probe = dspy.LM(native, api_base=route.endpoint, api_key="capability-probe")
            caps = capabilities(probe)
        except Exception:
            return (False, False, False, frozenset())
        return (caps.function_calling, caps.reasoning, caps.response_schema, frozenset(caps.params))
    inner = _provider_engine(route.provider)
    return (
        bool(getattr(inner, "supports_function_calling", False)),
        bool(getattr(inner, "supports_reasoning", False)),
        bool(getattr(inner, "supports_response_schema", False)),
        frozenset(getattr(inner, "supported_params", ()) or ()),
    )


class GatewayEngine:
    """DSPy engine wrapper: routing, admission, accounting and telemetry around the real engines.

    One DSPy LM call is one `complete()`: a plain model makes one provider request; an alias picks
    one of its deployments (skipping those admission refuses: open breaker, exhausted limits or
    budget); a transient failure moves on to the model's next deployment, then to the next fallback
    model, inside the same call, so DSPy and the task layer see one LM call and at most one
    provider request per deployment tried.
    """

    def __init__(self, model: str):
        self.model = model
        self.plan = routing.plan_for(model)
        self.route = self.plan.targets[0].deployments[0].route  # capabilities, resolve
        self.inner = _provider_engine(self.route.provider)

    @property
    def supports_function_calling(self) -> bool:
        return _capabilities(self.route)[0]

    @property
    def supports_reasoning(self) -> bool:
        return _capabilities(self.route)[1]

    @property
    def supports_response_schema(self) -> bool:
        return _capabilities(self.route)[2]

    @property
    def supported_params(self) -> frozenset:
        return _capabilities(self.route)[3]

    def resolve(self, model: str) -> Any:
        resolve = getattr(self.inner, "resolve", None)
        return resolve(self.route.lm15_model) if resolve else None

    def complete(self, request: Request) -> Response:
        calllog.clear_answer()
        if self.plan.simple:
            return self._call(self.route, request)
        return self._routed(request)

    def _routed(self, request: Request) -> Response:
        plan = self.plan
        error: BaseException | None = None
        index = 0
        while True:
            target = plan.targets[index]
            reason: str | None = None
            routes = _ordered(target)
            for position, route in enumerate(routes):
                # A model's last (or only) deployment waits for a rate limit or a bulkhead slot up
                # to its policy's bound, and only past it falls back; while another deployment of
                # the model could take the call at once, nobody waits.
                wait = None if position == len(routes) - 1 else 0.0
                try:
                    return self._call(route, request, wait, track=target.strategy == "least-busy")
                except (resilience.AdmissionError, budgets.BudgetExceeded) as exc:
                    # Nothing was sent: the model's next deployment may take the call.
                    error = exc
                    if isinstance(exc, resilience.AdmissionError):
                        reason = fallback_reason(exc)
                except Exception as exc:
                    error, reason = exc, fallback_reason(exc)
                    if reason is None:
                        raise  # a permanent error (400, 401, unparseable) fails the same anywhere
                    if reason != CONTEXT_WINDOW and position < len(routes) - 1:
                        # Another deployment of the same model (another provider or region) takes
                        # the call: one request per deployment. Not for a context-window error,
                        # which the same model refuses everywhere.
                        following_route = routes[position + 1]
                        calllog.note_fallback(route.model, reason)
                        telemetry.emit(
                            "llm.fallback",
                            {},
                            {"model": route.model, "fallback": following_route.model, "reason": reason},
                        )
                        continue
                    break  # one provider request per model tried
            following = None if reason is None else _next_target(plan, index, reason, target)
            if reason is None or following is None:
                assert error is not None
                raise error
            calllog.note_fallback(target.model, reason)
            telemetry.emit(
                "llm.fallback", {}, {"model": target.model, "fallback": following.model, "reason": reason}
            )
            index = plan.targets.index(following)

    def _call(
        self, route: Route, request: Request, max_wait_s: float | None = None, track: bool = False
    ) -> Response:
        """One provider request to one deployment: budget, admission, the request, accounting."""
        attempt = _Attempt(self.model, route, request, max_wait_s, track)
        try:
            response = attempt.inner.complete(attempt.sent)
        except BaseException as exc:
            attempt.failed(exc)
            raise
        attempt.succeeded(response)
        return response

    def stream(self, request: Request) -> Iterator[Any]:
        """One streamed provider request (DSPy's streaming path, `dspy.streamify`): the same
        admission and accounting as `complete()`, usage and cost from the stream's end event.
        Deployments and fallbacks are tried before the first event only: admission refusals move
        on to the next deployment; once the provider answers, a failure ends the stream."""
        calllog.clear_answer()
        routes = [self.route] if self.plan.simple else _ordered(self.plan.targets[0])
        error: BaseException | None = None
        for position, route in enumerate(routes):
            try:
                attempt = _Attempt(self.model, route, request, None if position == len(routes) - 1 else 0.0)
            except (resilience.AdmissionError, budgets.BudgetExceeded) as exc:
                error = exc
                continue
            return attempt.stream()
        assert error is not None
        raise error

    def close(self) -> None:
        """The inner engine is shared by the process; closing one LM must not close it."""

    @staticmethod
    def _report(call: ProviderCall) -> None:
        calllog.report(call)


class _Attempt:
    """One provider request to one deployment: admitted on construction (breaker, rate limits,
    bulkhead, budget; a refusal raises before anything is sent), then accounted once."""

    def __init__(
        self, model: str, route: Route, request: Request, max_wait_s: float | None, track: bool = False
    ):
        self.route = route
        owner = resilience.current_owner()
        budgets.check(providers=(route.provider,), **owner)
        self.counted = quotas.admit(owner)  # the project's and key's per-minute limits
        self.ticket = resilience.admit(
            route.provider,
            route.endpoint,
            estimate=resilience.estimate_tokens(request),
            max_wait_s=max_wait_s,
            track=track,
        )
        # Admitted: the provider is waited on without holding a pooled database connection (a
        # budget refresh above may have taken one), so connections scale with statements, not
        # with calls in flight.
        db.release()
        self.meta = {"provider": route.provider, "model": model, "deployment": route.model}
        telemetry.emit("llm.request.start", {}, self.meta)
        self.started = time.perf_counter()
        self.call = ProviderCall(model=route.model, provider=route.provider)
        self.inner = _provider_engine(route.provider)
        self.sent = request if request.model == route.lm15_model else replace(request, model=route.lm15_model)

    def failed(self, exc: BaseException) -> None:
        call = self.call
        call.latency_ms = (time.perf_counter() - self.started) * 1000
        call.error = type(exc).__name__
        self.ticket.finish(failure=_breaker_failure(exc), neutral=not isinstance(exc, Exception))
        calllog.report(call)
        telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**self.meta, "status": "error"})

    def succeeded(self, response: Any) -> None:
        call, route = self.call, self.route
        call.latency_ms = (time.perf_counter() - self.started) * 1000
        call.prompt_tokens = response.usage.input_tokens or 0
        call.completion_tokens = response.usage.output_tokens or 0
        # Priced by the deployment that answered, and spent against its provider.
        call.cost_usd = pricing.cost_usd(route.model, route.lm15_provider, response)
        self.ticket.finish(
            failure=None, tokens=call.prompt_tokens + call.completion_tokens, cost_usd=call.cost_usd or 0.0
        )
        quotas.spend_tokens(self.counted, call.prompt_tokens + call.completion_tokens)
        calllog.report(call)
        calllog.note_answer(route.model, route.provider)
        # Tokens first: a span handler closes the request span on llm.request.stop.
        telemetry.emit(
            "llm.tokens",
            {
                "prompt": call.prompt_tokens,
                "completion": call.completion_tokens,
                "cost_usd": call.cost_usd or 0.0,
            },
            self.meta,
        )
        telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**self.meta, "status": "ok"})

    def stream(self) -> Iterator[Any]:
        """The provider's stream events, passed on as they arrive (`coalesced`); accounted at the
        end event (or at the failure, or when the consumer stops early)."""
        from dspy.lm15 import Message, Response, TextPart, Usage

        usage: Any = None
        finish: Any = None
        try:
            for event in coalesced(self.inner.stream(self.sent)):
                if getattr(event, "type", None) == "end":
                    usage, finish = getattr(event, "usage", None), getattr(event, "finish_reason", None)
                yield event
        except BaseException as exc:  # a provider failure, or the consumer closing the stream early
            self.failed(exc)
            raise
        self.succeeded(
            Response(
                id="stream",
                model=self.sent.model,
                message=Message.assistant([TextPart(" ")]),  # pricing reads usage only
                finish_reason=finish or "stop",
                usage=usage or Usage(input_tokens=0, output_tokens=0, total_tokens=0),
            )
        )


_PUMP_END = object()
# Provider streams of this process being read: the busier, the longer a reader lets deltas gather
# between reads (0.2 ms per open stream, from 5 ms at 25 streams to 100 ms at 500 and more).
_open_streams = 0
_open_lock = threading.Lock()
PACE_PER_STREAM_S, PACE_MIN_S, PACE_MAX_S = 0.0002, 0.005, 0.1


class _PumpFailed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def coalesced(events: Iterator[Any]) -> Iterator[Any]:
    """A provider's stream events, read by a thread of their own: each time the consumer (DSPy's
    streaming path: its listeners, the stream's relay) asks for more, it gets every event that
    arrived meanwhile, consecutive text deltas of one part merged into one. A consumer that keeps
    up sees each delta as the provider sent it; one that fell behind (a busy process) catches up
    with one delta for many, so the work per token does not grow with the backlog and a stream
    still ends when the provider's does (`docs/streaming.md`). With many streams open in the
    process (`PACE_PER_STREAM_S` each: from 25), a reader that had to wait for a delta also waits
    a little before its next read, so the deltas gather in the socket: one wake-up per stream
    per pace rather than one per provider delta, which left ordinary requests waiting seconds for
    the GIL while 500 streams' tokens flowed. Failures are raised as the provider's own
    exceptions; a consumer that stops early stops the reader at its next event."""
    import queue

    arrived: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stopped = threading.Event()

    def pump() -> None:
        global _open_streams
        with _open_lock:
            _open_streams += 1
        try:
            source = iter(events)
            while not stopped.is_set():
                asked = time.perf_counter()
                event = next(source, _PUMP_END)
                arrived.put(event)
                if event is _PUMP_END:
                    return
                # Waited on the network for it, and many streams open: let the next ones gather
                # in the socket (one read and one hand-over for them all) rather than waking
                # this process once per delta of every stream.
                pace = min(PACE_MAX_S, _open_streams * PACE_PER_STREAM_S)
                if pace >= PACE_MIN_S and time.perf_counter() - asked > 0.0005:
                    time.sleep(pace)
        except BaseException as exc:
            arrived.put(_PumpFailed(exc))
        finally:
            with _open_lock:
                _open_streams -= 1
            with contextlib.suppress(Exception):
                events.close()  # type: ignore[attr-defined]
        arrived.put(_PUMP_END)

    threading.Thread(target=pump, name="lm-stream", daemon=True).start()
    try:
        while True:
            batch = [arrived.get()]
            while True:
                try:
                    batch.append(arrived.get_nowait())
                except queue.Empty:
                    break
            for item in _merge_text_deltas(batch):
                if item is _PUMP_END:
                    return
                if isinstance(item, _PumpFailed):
                    raise item.exc
                yield item
    finally:
        stopped.set()


def _merge_text_deltas(batch: list[Any]) -> list[Any]:
    """`batch` with each run of text deltas of one part (and complete logprobs) joined into one."""
    from dspy.lm15 import StreamDeltaEvent, TextDelta

    out: list[Any] = []
    for item in batch:
        delta = getattr(item, "delta", None)
        if isinstance(delta, TextDelta) and delta.logprobs_complete and out:
            last = getattr(out[-1], "delta", None)
            if isinstance(last, TextDelta) and last.logprobs_complete and last.part_index == delta.part_index:
                out[-1] = StreamDeltaEvent(
                    delta=replace(last, text=last.text + delta.text, logprobs=last.logprobs + delta.logprobs)
                )
                continue
        out.append(item)
    return out


def _ordered(target: routing.Target) -> list[Route]:
    """The deployments of a model in the order this call tries them: `weighted` a random order
    by weight (the first is chosen with probability weight / total), `least-busy` by the fewest
    calls in flight across processes (ties by weight). Admission refusals move down the list."""
    deployments = target.deployments
    if len(deployments) == 1:
        return [deployments[0].route]
    # Efraimidis-Spirakis: sorting by u ** (1 / w) is a weighted random permutation.
    keys = {id(d): random.random() ** (1.0 / d.weight) for d in deployments}
    ordered = sorted(deployments, key=lambda d: keys[id(d)], reverse=True)
    if target.strategy == "least-busy":
        names = [resilience.endpoint_name(d.route.provider, d.route.endpoint) for d in ordered]
        counts = resilience.in_flight(names)
        if counts is not None:  # Redis unavailable: weighted order (admission fails open too)
            busy = dict(zip(names, counts, strict=True))
            ordered.sort(key=lambda d: busy[resilience.endpoint_name(d.route.provider, d.route.endpoint)])
    return [d.route for d in ordered]


def _next_target(
    plan: routing.Plan, index: int, reason: str, failed: routing.Target
) -> routing.Target | None:
    """The model to fall back to after `failed`: the next one, or for a context-window error the
    next whose known window is larger (a model with the same or an unknown window would refuse
    the same prompt)."""
    rest = plan.targets[index + 1 :]
    if reason != CONTEXT_WINDOW:
        return rest[0] if rest else None
    windows = [routing.context_window(d.route) for d in failed.deployments]
    known = [w for w in windows if w is not None]
    if not known:
        return None
    for target in rest:
        theirs = [routing.context_window(d.route) for d in target.deployments]
        if theirs and all(w is not None and w > max(known) for w in theirs):
            return target
    return None


def embed(model: str, texts: list[str]) -> list[list[float]]:
    """One provider request embedding `texts` with `model` (the caller batches and caches)."""
    route = embedding_route_for(model)
    engine = embedders.embedder_for(route, embedding_key(route))
    # Refused before anything is sent, exactly like a chat call.
    owner = resilience.current_owner()
    budgets.check(providers=(route.provider,), **owner)
    counted = quotas.admit(owner)
    ticket = resilience.admit(route.provider, route.endpoint, kind="embeddings")
    meta = {"provider": route.provider, "model": route.model, "kind": "embedding"}
    telemetry.emit("llm.request.start", {}, meta)
    started = time.perf_counter()
    call = ProviderCall(model=route.model, provider=route.provider)
    try:
        embedded = engine.embed(texts, min(settings.DSPEX_LM_TIMEOUT_S, ticket.policy.call_timeout_s))
    except Exception as exc:
        call.latency_ms = (time.perf_counter() - started) * 1000
        call.error = type(exc).__name__
        transient = engine.is_transient(exc)
        ticket.finish(failure=f"{type(exc).__name__}: {exc}"[:300] if transient else None)
        _report_embedding(call, len(texts))
        telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**meta, "status": "error"})
        raise
    call.latency_ms = (time.perf_counter() - started) * 1000
    call.prompt_tokens = embedded.prompt_tokens
    call.cost_usd = pricing.cost_for_tokens(route.model, call.prompt_tokens)
    ticket.finish(failure=None, tokens=call.prompt_tokens, cost_usd=call.cost_usd or 0.0)
    quotas.spend_tokens(counted, call.prompt_tokens)
    _report_embedding(call, len(texts))
    telemetry.emit(
        "llm.tokens", {"prompt": call.prompt_tokens, "completion": 0, "cost_usd": call.cost_usd or 0.0}, meta
    )
    telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**meta, "status": "ok"})
    return embedded.vectors


def _report_embedding(call: ProviderCall, texts: int) -> None:
    """Tell the run in progress on this thread: DSPy's callbacks are what follow a run into the
    threads its modules fan out to, so the recorder of the run is found among them."""
    for callback in dspy.settings.callbacks or ():
        handler = getattr(callback, "on_embedding", None)
        if handler is not None:
            handler(call, texts)


def _breaker_failure(exc: BaseException) -> str | None:
    """The error text a breaker counts, or None: only transient failures (5xx, timeouts, connection
    errors) count; a 429 or a 4xx shows the provider is up and answering."""
    if not isinstance(exc, Exception):
        return None  # cancelled from a callback (a BaseException): says nothing about the provider
    failure = classify(exc)
    return f"{failure.type}: {failure.message}" if failure.kind == TRANSIENT else None


@functools.lru_cache(maxsize=256)
def _lm(model: str, cache: bool, sampling: tuple[tuple[str, Any], ...]) -> dspy.LM:
    # num_retries=0: the task layer owns retries (executions.tasks), so attempts never multiply.
    return dspy.LM(model, engine=GatewayEngine(model), num_retries=0, cache=cache, **dict(sampling))


def lm_for(config: dict | None = None, *, cache: bool = True) -> dspy.LM:
    """The gateway LM for a step's resolved LM config (memoised per process)."""
    cfg = lm_config(config)
    sampling = tuple((key, cfg[key]) for key in SAMPLING_KEYS if cfg.get(key) is not None)
    return _lm(str(cfg["model"]), bool(cache), sampling)


def configure_dspy() -> None:
    """Process-wide DSPy set-up, once, from the main thread at start-up (see docs/dspy.md)."""
    install_llm_cache()


def reset() -> None:
    """Forget memoised engines, LMs and the provider registry with its routes (after settings
    change: tests, reconfiguration, a rotated key)."""
    routing.reset_registry()
    _provider_engine.cache_clear()
    _proxies_configured.cache_clear()
    _capabilities.cache_clear()
    _lm.cache_clear()
    embedders.embedder_for.cache_clear()
