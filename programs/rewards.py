"""Step rewards: label-free scores that BestOfN and Refine steps of a pipeline name.

A reward is `(args: dict, pred: dspy.Prediction) -> float` in [0, 1], the signature DSPy's
BestOfN and Refine call: `args` are the step's inputs, `pred` the attempt's prediction. A
pipeline step names a reward from `REWARDS` (through `programs.spec.registry`). Refine shows the
reward's source code to the LM when asking for advice, so rewards are small, plain functions.

Optimizer metrics, which score a prediction against a labelled example, are another thing and
live in `optimization.metrics`.
"""

from collections.abc import Callable
from typing import Any

import dspy

Reward = Callable[[dict[str, Any], dspy.Prediction], float]

# Fields modules add around the signature's outputs; rewards judge the outputs themselves.
_AUXILIARY_FIELDS = frozenset({"reasoning", "rationale", "trajectory"})
CONCISE_WORDS = 30


def _outputs(pred: dspy.Prediction) -> dict[str, Any]:
    if pred is None:
        return {}
    return {key: value for key, value in pred.items() if key not in _AUXILIARY_FIELDS}


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | list | dict | tuple):
        return not (value.strip() if isinstance(value, str) else value)
    return False


def nonempty(args: dict[str, Any], pred: dspy.Prediction) -> float:
    """1.0 when every output field has a non-blank value, else 0.0."""
    outputs = _outputs(pred)
    return 1.0 if outputs and not any(_is_empty(value) for value in outputs.values()) else 0.0


def concise(args: dict[str, Any], pred: dspy.Prediction) -> float:
    """1.0 for non-empty outputs of at most 30 words in total, less the longer they get."""
    outputs = _outputs(pred)
    if not outputs or any(_is_empty(value) for value in outputs.values()):
        return 0.0
    words = sum(len(str(value).split()) for value in outputs.values())
    return 1.0 if words <= CONCISE_WORDS else CONCISE_WORDS / words


REWARDS: dict[str, Reward] = {"nonempty": nonempty, "concise": concise}
