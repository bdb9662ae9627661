"""Checking DSPy state before it is loaded into a compiled program.

`Predict.load_state` sets every key of a predictor's state as an attribute, so a stored
state could otherwise overwrite `config` (LM call arguments), `callbacks` or anything else
on the predictor. Only the keys DSPy itself dumps are let through, with their expected
shapes, and never an `lm`: a predictor-level LM would bypass the gateway.
"""

from typing import Any

PREDICT_STATE_KEYS = frozenset({"traces", "train", "demos", "signature", "lm", "fields"})


class StateMismatchError(ValueError):
    """A saved DSPy state does not have the predictors of this program, or is malformed."""


def clean_predictor_state(name: str, entry: Any) -> dict[str, Any]:
    """The state of one predictor with its shape checked and its LM dropped."""
    if not isinstance(entry, dict):
        raise StateMismatchError(f"state of {name!r} must be an object")
    unknown = sorted(str(key) for key in entry if key not in PREDICT_STATE_KEYS)
    if unknown:
        raise StateMismatchError(f"state of {name!r} has unknown keys {unknown}")
    signature = entry.get("signature")
    if not (
        isinstance(signature, dict)
        and isinstance(signature.get("instructions"), str)
        and isinstance(signature.get("fields"), list)
        and all(isinstance(field, dict) for field in signature["fields"])
    ):
        raise StateMismatchError(f"state of {name!r} needs a signature with instructions and fields")
    for key in ("demos", "traces", "train"):
        value = entry.get(key, [])
        if not isinstance(value, list) or (key == "demos" and not all(isinstance(d, dict) for d in value)):
            raise StateMismatchError(f"{key} in the state of {name!r} must be a list of objects")
    if not isinstance(entry.get("fields", {}), dict):
        raise StateMismatchError(f"fields in the state of {name!r} must be an object")
    return {**entry, "lm": None}
