"""Prometheus metrics: telemetry events in, counters and histograms out.

Labels stay bounded: program *names*, provider, model, queue, status, cache, module — never ids.
With PROMETHEUS_MULTIPROC_DIR set (gunicorn workers and Celery processes, see README
"Monitoring"), every process writes its samples there and `/metrics` aggregates them, so one
scrape shows what web and workers did.
"""

from typing import Any

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

EXECUTIONS = Counter("dspex_execution", "Executions finished", ["program", "status"])
EXECUTION_DURATION = Histogram(
    "dspex_execution_duration_seconds", "Execution wall time", ["program", "status"], buckets=LATENCY_BUCKETS
)
MODULE_DURATION = Histogram(
    "dspex_module_execute_duration_seconds",
    "Pipeline step wall time",
    ["module", "status"],
    buckets=LATENCY_BUCKETS,
)
LLM_REQUESTS = Counter(
    "dspex_llm_request", "LM requests that reached a provider", ["provider", "model", "status"]
)
LLM_DURATION = Histogram(
    "dspex_llm_request_duration_seconds",
    "Provider request latency",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
# Per deployment: the model string that answered (`<provider>/<model>`), which for a model alias
# with several deployments or a fallback is not the model that was asked for.
DEPLOYMENT_REQUESTS = Counter(
    "dspex_llm_deployment_requests",
    "LM requests that reached a provider, by the deployment that answered",
    ["provider", "deployment", "status"],
)
DEPLOYMENT_DURATION = Histogram(
    "dspex_llm_deployment_request_duration_seconds",
    "Provider request latency by deployment",
    ["provider", "deployment"],
    buckets=LATENCY_BUCKETS,
)
FALLBACKS = Counter(
    "dspex_llm_fallbacks",
    "LM calls moved from a model to its next fallback",
    ["model", "fallback", "reason"],
)
LLM_TOKENS = Counter("dspex_llm_tokens", "Tokens billed by providers", ["provider", "model", "type"])
LLM_COST = Counter("dspex_llm_cost_usd", "Provider cost in USD", ["provider", "model"])
CACHE_HITS = Counter("dspex_cache_hit", "Cache hits", ["cache"])
CACHE_MISSES = Counter("dspex_cache_miss", "Cache misses", ["cache"])
CACHE_ERRORS = Counter("dspex_cache_error", "Cache operations that failed (the cache failed open)", ["cache"])
OPTIMIZATION_RUNS = Counter("dspex_optimization_run", "Optimization runs finished", ["optimizer", "status"])
# Feedback on executions (executions.feedback): entries by program and channel (api, admin), and
# the scores given (entries without a score are counted, not observed).
FEEDBACK = Counter("dspex_feedback", "Feedback entries received", ["program", "channel"])
FEEDBACK_SCORE = Histogram(
    "dspex_feedback_score",
    "Feedback scores (0..1)",
    ["program"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
# Streamed executions (executions.streaming): by how the stream ended (done, error, disconnected),
# and the time from the request to the first `token` event.
STREAMS = Counter("dspex_execution_stream", "Streamed executions finished", ["program", "outcome"])
TIME_TO_FIRST_TOKEN = Histogram(
    "dspex_time_to_first_token_seconds",
    "Streamed executions: time from the request to the first token event",
    ["program"],
    buckets=LATENCY_BUCKETS,
)


def _on_stream(event: str, measurements: dict, metadata: dict) -> None:
    program = _label(metadata.get("program"))
    STREAMS.labels(program, _label(metadata.get("outcome"))).inc()
    if measurements.get("first_token_s") is not None:
        TIME_TO_FIRST_TOKEN.labels(program).observe(measurements["first_token_s"])


def _label(value: Any, default: str = "unknown") -> str:
    text = str(value) if value not in (None, "") else default
    return text[:100]


def _on_execution(event: str, measurements: dict, metadata: dict) -> None:
    program, status = _label(metadata.get("program")), _label(metadata.get("status"))
    EXECUTIONS.labels(program, status).inc()
    if "duration_ms" in measurements:
        EXECUTION_DURATION.labels(program, status).observe(measurements["duration_ms"] / 1000)


def _on_module_stop(event: str, measurements: dict, metadata: dict) -> None:
    MODULE_DURATION.labels(_label(metadata.get("module")), _label(metadata.get("status"))).observe(
        measurements.get("duration_ms", 0) / 1000
    )


def _on_llm_stop(event: str, measurements: dict, metadata: dict) -> None:
    provider, model = _label(metadata.get("provider")), _label(metadata.get("model"))
    status, seconds = _label(metadata.get("status")), measurements.get("duration_ms", 0) / 1000
    LLM_REQUESTS.labels(provider, model, status).inc()
    LLM_DURATION.labels(provider, model).observe(seconds)
    # Events that name no deployment (embeddings, a single-deployment model) answered as `model`.
    deployment = _label(metadata.get("deployment") or metadata.get("model"))
    DEPLOYMENT_REQUESTS.labels(provider, deployment, status).inc()
    DEPLOYMENT_DURATION.labels(provider, deployment).observe(seconds)


def _on_fallback(event: str, measurements: dict, metadata: dict) -> None:
    FALLBACKS.labels(
        _label(metadata.get("model")), _label(metadata.get("fallback")), _label(metadata.get("reason"))
    ).inc()


def _on_tokens(event: str, measurements: dict, metadata: dict) -> None:
    provider, model = _label(metadata.get("provider")), _label(metadata.get("model"))
    LLM_TOKENS.labels(provider, model, "prompt").inc(measurements.get("prompt", 0))
    LLM_TOKENS.labels(provider, model, "completion").inc(measurements.get("completion", 0))
    LLM_COST.labels(provider, model).inc(measurements.get("cost_usd", 0) or 0)


def _on_cache(counter: Counter) -> Any:
    def handle(event: str, measurements: dict, metadata: dict) -> None:
        counter.labels(_label(metadata.get("cache"))).inc()

    return handle


def _on_optimization(event: str, measurements: dict, metadata: dict) -> None:
    OPTIMIZATION_RUNS.labels(_label(metadata.get("optimizer")), _label(metadata.get("status"))).inc()


def _on_feedback(event: str, measurements: dict, metadata: dict) -> None:
    program = _label(metadata.get("program"))
    FEEDBACK.labels(program, _label(metadata.get("channel"))).inc()
    if "score" in measurements:
        FEEDBACK_SCORE.labels(program).observe(measurements["score"])


HANDLERS = {
    "execution.stop": _on_execution,
    "execution.stream": _on_stream,
    "execution.exception": _on_execution,
    "module.execute.stop": _on_module_stop,
    "llm.request.stop": _on_llm_stop,
    "llm.tokens": _on_tokens,
    "llm.fallback": _on_fallback,
    "cache.hit": _on_cache(CACHE_HITS),
    "cache.miss": _on_cache(CACHE_MISSES),
    "cache.error": _on_cache(CACHE_ERRORS),
    "optimization.run.stop": _on_optimization,
    "feedback.received": _on_feedback,
}


def prometheus_handler(event: str, measurements: dict, metadata: dict) -> None:
    """The telemetry handler: one dict lookup for events that have no metric."""
    handle = HANDLERS.get(event)
    if handle is not None:
        handle(event, measurements, metadata)
