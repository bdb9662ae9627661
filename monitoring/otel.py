"""Optional OpenTelemetry spans for executions, steps and LM calls (extra `otel`).

Enabled when OTEL_EXPORTER_OTLP_ENDPOINT is set and the opentelemetry packages are installed.
Spans come from the same telemetry events as the metrics: a start event opens a span, the
matching stop event closes it. Events of one execution are emitted in nesting order on one
thread, so a per-thread stack pairs them without any ids.
"""

import logging
import os
import threading
from typing import Any

from monitoring import telemetry

logger = logging.getLogger(__name__)

OPENS = {
    "execution.start": "dspex.execution",
    "module.execute.start": "dspex.step",
    "llm.request.start": "dspex.llm",
}
CLOSES = {
    "execution.stop": "dspex.execution",
    "execution.exception": "dspex.execution",
    "module.execute.stop": "dspex.step",
    "llm.request.stop": "dspex.llm",
}


class SpanHandler:
    """Telemetry handler that turns start/stop events into OpenTelemetry spans."""

    def __init__(self, tracer: Any):
        self.tracer = tracer
        self._local = threading.local()

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def __call__(self, event: str, measurements: dict, metadata: dict) -> None:
        stack = self._stack()
        if event in OPENS:
            from opentelemetry import trace

            context = trace.set_span_in_context(stack[-1][1]) if stack else None
            span = self.tracer.start_span(OPENS[event], context=context, attributes=_attributes(metadata))
            stack.append((OPENS[event], span))
        elif event == "llm.tokens" and stack and stack[-1][0] == "dspex.llm":
            span = stack[-1][1]
            span.set_attribute("dspex.tokens.prompt", int(measurements.get("prompt", 0)))
            span.set_attribute("dspex.tokens.completion", int(measurements.get("completion", 0)))
            span.set_attribute("dspex.cost_usd", float(measurements.get("cost_usd", 0) or 0))
        elif event in CLOSES:
            name = CLOSES[event]
            # Close up to the matching span, so one missing stop cannot corrupt the stack.
            while stack:
                open_name, span = stack.pop()
                if open_name == name:
                    for key, value in _attributes(metadata).items():
                        span.set_attribute(key, value)
                    if "duration_ms" in measurements:
                        span.set_attribute("dspex.duration_ms", float(measurements["duration_ms"]))
                    if metadata.get("status") in {"error", "failed"}:
                        from opentelemetry.trace import Status, StatusCode

                        span.set_status(Status(StatusCode.ERROR))
                    span.end()
                    break
                span.end()


def _attributes(metadata: dict) -> dict:
    return {
        f"dspex.{k}": str(v) for k, v in metadata.items() if v is not None and not isinstance(v, dict | list)
    }


def configure_from_env() -> SpanHandler | None:
    """Install the span handler with an OTLP/HTTP exporter if OTEL_EXPORTER_OTLP_ENDPOINT is set."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry is not installed (extra `otel`)")
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": "dspex"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    handler = SpanHandler(trace.get_tracer("dspex"))
    telemetry.attach(handler)
    return handler
