"""The one converter from what DSPy and the pipeline produce to plain JSON.

Step inputs and outputs, LM messages and completions, and program outputs (Predictions,
pydantic models, tuples, sets, dates...) all pass through `to_jsonable` before they are stored
in a `jsonb` column or returned by the API.

Policy for values JSON cannot hold:

* non-finite floats become the strings `"nan"`, `"inf"` and `"-inf"` (`str()` of the float):
  Postgres `jsonb` rejects NaN and Infinity, and Python's `json` would write them as bare
  tokens no strict JSON parser accepts;
* dict keys become strings; lists, tuples, sets and frozensets become lists;
* dates and times become ISO 8601 strings;
* anything else (and anything nested deeper than `MAX_DEPTH`) becomes its `str()`, the latter
  cut to `MAX_DEPTH_TEXT` characters.

The conversion is idempotent: converting its own output changes nothing.
"""

import math
from typing import Any

import dspy
import pydantic

MAX_DEPTH = 32
MAX_DEPTH_TEXT = 1000


def to_jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-serialisable copy of `value` under the policy above."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return str(value)[:MAX_DEPTH_TEXT]
    if isinstance(value, dspy.Example):  # Predictions are Examples
        return {str(key): to_jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, pydantic.BaseModel) or hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump(mode="json"), depth + 1)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item, depth + 1) for item in value]
    if hasattr(value, "toDict"):  # DSPy's dict-like containers outside Example
        return to_jsonable(value.toDict(), depth + 1)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
