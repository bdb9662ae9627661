"""OpenTelemetry spans for an execution, its steps and its LM calls (in-memory exporter)."""

import pytest

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from monitoring import telemetry  # noqa: E402
from monitoring.otel import SpanHandler  # noqa: E402

pytestmark = pytest.mark.django_db


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handler = SpanHandler(provider.get_tracer("test"))
    telemetry.attach(handler)
    yield exporter
    telemetry.detach(handler)


def test_an_execution_becomes_a_tree_of_spans(api, make_program, spans, settings):
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, "sim": {"prompt": 1.0, "completion": 1.0}}
    pipeline = {
        "steps": [
            {"name": "draft", "module": "Predict", "signature": "question -> answer"},
            {
                "name": "final",
                "module": "Predict",
                "signature": "question, draft -> answer",
                "inputs": {"question": "$input.question", "draft": "$draft.answer"},
            },
        ]
    }
    program = make_program(name="otel-qa", pipeline=pipeline)
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "trace me"}, "wait": True},
        format="json",
    ).json()
    assert body["status"] == "succeeded"
    finished = {s.name: [] for s in spans.get_finished_spans()}
    for span in spans.get_finished_spans():
        finished[span.name].append(span)
    (execution,) = finished["dspex.execution"]
    steps, calls = finished["dspex.step"], finished["dspex.llm"]
    assert len(steps) == 2 and len(calls) == 2
    assert all(step.parent.span_id == execution.context.span_id for step in steps)
    assert {call.parent.span_id for call in calls} == {step.context.span_id for step in steps}
    assert execution.attributes["dspex.program"] == "otel-qa"
    assert execution.attributes["dspex.status"] == "succeeded"
    lm_entries = [e for e in body["trace"] if e["kind"] == "lm"]
    assert sum(c.attributes["dspex.tokens.prompt"] for c in calls) == sum(
        e["prompt_tokens"] for e in lm_entries
    )
    assert sum(c.attributes["dspex.cost_usd"] for c in calls) == pytest.approx(body["metrics"]["cost_usd"])


def test_a_failing_handler_never_breaks_an_execution(api, make_program):
    def broken(event, measurements, metadata):
        raise RuntimeError("handler bug")

    telemetry.attach(broken)
    try:
        program = make_program(name="robust")
        body = api.post(
            f"/api/v1/programs/{program.id}/execute/",
            {"input": {"question": "still fine"}, "wait": True},
            format="json",
        ).json()
    finally:
        telemetry.detach(broken)
    assert body["status"] == "succeeded"
