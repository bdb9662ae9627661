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

import functools
import time
from typing import Any

import dspy
from django.conf import settings
from dspy.lm15 import Request, Response

from caching.llm_cache import install_llm_cache
from llm import budgets, calllog, embedders, pricing, resilience
from llm.calllog import ProviderCall
from llm.errors import TRANSIENT, classify
from llm.routing import SAMPLING_KEYS, SIM_PROVIDER, Route, embedding_route_for, lm_config, route_for
from monitoring import telemetry


@functools.cache
def _provider_engine(provider: str) -> Any:
    """The real engine for a provider, one per process: it owns the connection pool."""
    if provider == SIM_PROVIDER:
        from llm.sim.engines import SimEngine  # a production process never needs the simulator

        return SimEngine()
    from dspy.clients.engines.lm15_engine import LM15Engine
    from dspy.lm15 import RouterConfig, Timeouts

    timeout = resilience.policy_for(provider).call_timeout_s  # DSPEX_LM_TIMEOUT_S unless overridden
    # lm15's key for OpenAI-compatible chat is "openai-chat": a base URL registered under
    # "openai" is ignored and the call silently goes to api.openai.com (docs/dspy.md).
    key_name = "openai-chat" if provider == "openai" else provider
    config = RouterConfig(
        env={},  # never pick credentials or endpoints up from the process environment implicitly
        api_keys={key_name: settings.DSPEX_LM_API_KEY or "not-set"},
        base_urls={key_name: settings.DSPEX_LM_API_BASE} if settings.DSPEX_LM_API_BASE else None,
        timeouts=Timeouts(connect=min(5.0, timeout), read=timeout, write=timeout, pool=timeout),
    )
    return LM15Engine(config, model_type="chat")


@functools.lru_cache(maxsize=128)
def _capabilities(route: Route) -> tuple[bool, bool, bool, frozenset]:
    """What the routed model supports, as DSPy would see it without our wrapper.

    DSPy asks a custom engine for these hints (JSONAdapter picks `response_format` from them);
    answering them keeps structured output working through the gateway. Offline: the native
    path reads DSPy's bundled model metadata, never the network.
    """
    if route.provider != SIM_PROVIDER:
        from dspy.clients.capabilities import capabilities

        try:
            caps = capabilities(dspy.LM(route.model, api_base=route.endpoint, api_key="capability-probe"))
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
    """DSPy engine wrapper: admission, accounting and telemetry around the real engine."""

    def __init__(self, route: Route):
        self.route = route
        self.inner = _provider_engine(route.provider)

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
        return resolve(model) if resolve else None

    def complete(self, request: Request) -> Response:
        route = self.route
        # Admission before anything is counted as a request: breaker, rate limits, bulkhead, budget.
        # A refusal raises an AdmissionError (classified like a 429 by llm.errors).
        budgets.check(providers=(route.provider,), program_id=resilience.current_program())
        ticket = resilience.admit(
            route.provider, route.endpoint, estimate=resilience.estimate_tokens(request)
        )
        meta = {"provider": route.provider, "model": route.model}
        telemetry.emit("llm.request.start", {}, meta)
        started = time.perf_counter()
        call = ProviderCall(model=route.model, provider=route.provider)
        try:
            response = self.inner.complete(request)
        except BaseException as exc:
            call.latency_ms = (time.perf_counter() - started) * 1000
            call.error = type(exc).__name__
            ticket.finish(failure=_breaker_failure(exc), neutral=not isinstance(exc, Exception))
            self._report(call)
            telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**meta, "status": "error"})
            raise
        call.latency_ms = (time.perf_counter() - started) * 1000
        call.prompt_tokens = response.usage.input_tokens or 0
        call.completion_tokens = response.usage.output_tokens or 0
        call.cost_usd = pricing.cost_usd(route.model, route.lm15_provider, response)
        ticket.finish(
            failure=None, tokens=call.prompt_tokens + call.completion_tokens, cost_usd=call.cost_usd or 0.0
        )
        self._report(call)
        # Tokens first: a span handler closes the request span on llm.request.stop.
        telemetry.emit(
            "llm.tokens",
            {
                "prompt": call.prompt_tokens,
                "completion": call.completion_tokens,
                "cost_usd": call.cost_usd or 0.0,
            },
            meta,
        )
        telemetry.emit("llm.request.stop", {"duration_ms": call.latency_ms}, {**meta, "status": "ok"})
        return response

    def stream(self, request: Request) -> Any:
        return self.inner.stream(request)

    def close(self) -> None:
        """The inner engine is shared by the process; closing one LM must not close it."""

    @staticmethod
    def _report(call: ProviderCall) -> None:
        calllog.report(call)


def embed(model: str, texts: list[str]) -> list[list[float]]:
    """One provider request embedding `texts` with `model` (the caller batches and caches)."""
    route = embedding_route_for(model)
    engine = embedders.embedder_for(route, settings.DSPEX_EMBEDDING_API_KEY)
    # Refused before anything is sent, exactly like a chat call.
    budgets.check(providers=(route.provider,), program_id=resilience.current_program())
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
    route = route_for(model)
    # num_retries=0: the task layer owns retries (executions.tasks), so attempts never multiply.
    return dspy.LM(model, engine=GatewayEngine(route), num_retries=0, cache=cache, **dict(sampling))


def lm_for(config: dict | None = None, *, cache: bool = True) -> dspy.LM:
    """The gateway LM for a step's resolved LM config (memoised per process)."""
    cfg = lm_config(config)
    sampling = tuple((key, cfg[key]) for key in SAMPLING_KEYS if cfg.get(key) is not None)
    return _lm(str(cfg["model"]), bool(cache), sampling)


def configure_dspy() -> None:
    """Process-wide DSPy set-up, once, from the main thread at start-up (see docs/dspy.md)."""
    install_llm_cache()


def reset() -> None:
    """Forget memoised engines and LMs (after settings change: tests, reconfiguration)."""
    _provider_engine.cache_clear()
    _capabilities.cache_clear()
    _lm.cache_clear()
    embedders.embedder_for.cache_clear()
