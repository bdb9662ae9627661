"""Turn what DSPy modules return (Predictions, pydantic models, tuples...) into plain JSON."""

import math
from typing import Any

import dspy
import pydantic

MAX_DEPTH = 32


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy of `value`; anything unknown becomes its `str()`.

    Non-finite floats become strings because Postgres `jsonb` rejects NaN and Infinity.
    """
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return str(value)[:1000]
    if isinstance(value, dspy.Example):  # Predictions are Examples
        return {str(key): to_jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, pydantic.BaseModel):
        return to_jsonable(value.model_dump(mode="json"), depth + 1)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item, depth + 1) for item in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
