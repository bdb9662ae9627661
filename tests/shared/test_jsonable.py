"""The one JSON converter (`dspex_site.jsonable`): its NaN/inf policy and what it accepts."""

import datetime
import math

import dspy
import pydantic
import pytest

from dspex_site.jsonable import MAX_DEPTH, to_jsonable
from executions.models import CognitiveExecution
from executions.runner import create_execution
from executions.tracing import TraceRecorder


class Point(pydantic.BaseModel):
    x: float
    y: float


def test_non_finite_floats_become_strings_everywhere() -> None:
    value = {"a": math.nan, "b": [math.inf, (-math.inf,)], "c": 1.5}
    assert to_jsonable(value) == {"a": "nan", "b": ["inf", ["-inf"]], "c": 1.5}


def test_dspy_pydantic_and_python_containers_become_plain_json() -> None:
    prediction = dspy.Prediction(answer="4", score=math.nan)
    when = datetime.date(2026, 1, 2)
    assert to_jsonable(prediction) == {"answer": "4", "score": "nan"}
    assert to_jsonable(Point(x=1, y=2)) == {"x": 1.0, "y": 2.0}
    assert to_jsonable({1: {"s"}, "when": when, "obj": object}) == {
        "1": ["s"],
        "when": "2026-01-02",
        "obj": "<class 'object'>",
    }


def test_the_conversion_is_idempotent_and_bounded() -> None:
    once = to_jsonable({"n": [math.nan, Point(x=math.inf, y=0)]})
    assert to_jsonable(once) == once
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    flat = to_jsonable(deep)
    for _ in range(MAX_DEPTH):
        flat = flat[0]
    assert isinstance(flat, str)


@pytest.mark.django_db
def test_a_trace_with_nan_is_stored_in_postgres(make_program) -> None:
    # Postgres jsonb rejects NaN: the recorder's entries must be storable as they are.
    recorder = TraceRecorder()
    recorder.step_started("answer", "Predict", {"x": math.nan, "p": dspy.Prediction(v=math.inf)})
    recorder.step_finished("answer", {"y": -math.inf}, None)
    execution = create_execution(make_program(), {"question": "q"})
    CognitiveExecution.objects.filter(pk=execution.pk).update(trace=recorder.entries)
    stored = CognitiveExecution.objects.get(pk=execution.pk).trace
    assert stored[0]["inputs"] == {"x": "nan", "p": {"v": "inf"}}
    assert stored[0]["outputs"] == {"y": "-inf"}
