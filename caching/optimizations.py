"""Compiled program state by optimization result id: Redis first (1 h), the database on a miss.

A worker that has not run a program yet (a fresh process, or after a deploy) gets the optimized
parameters from Redis instead of Postgres. The state is DSPy's plain-JSON `dump_state()`, so it is
stored as JSON. Results are immutable (a new optimization writes a new row), so an entry never
needs invalidating; it only expires.
"""

from typing import Any
from uuid import UUID

from caching.registry import OPTIMIZATIONS


def key_for(result_id: UUID | str) -> str:
    return f"opt:{result_id}"


def optimization_state(result_id: UUID | str) -> dict[str, Any] | None:
    """The stored DSPy state of an optimization result, or None if the result does not exist."""
    from optimization.models import OptimizationResult

    hit = OPTIMIZATIONS.get(key_for(result_id))
    if hit is not None:
        return hit.value
    state = OptimizationResult.objects.filter(id=result_id).values_list("parameters", flat=True).first()
    if state is not None:
        OPTIMIZATIONS.set(key_for(result_id), state)
    return state
