"""The per-call log: what each DSPy LM call (or embedding call) cost in provider requests.

A leaf of the LM path (`docs/architecture.md`). The gateway appends one `ProviderCall` per
request that reached a provider to the `CallLog` of the call in progress on this thread; the LLM
cache notes the usage a hit saved; the trace recorder and the optimization monitor open and
close the logs. None of them imports another to do so: they all share this module.

A trace gets usage, cost and latency from here rather than from DSPy's history lists, which are
disabled during executions (in a long-lived worker they only grow).
"""

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProviderCall:
    """One request that reached a provider."""

    model: str
    provider: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_ms: float = 0.0
    error: str | None = None


@dataclass
class CallLog:
    """Provider calls made for one DSPy LM call (several with n>1 or adapter fallbacks)."""

    calls: list[ProviderCall] = field(default_factory=list)
    cached_usage: dict[str, Any] | None = None  # usage recorded with a cache entry that answered this call


_local = threading.local()


def _stack() -> list[CallLog]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def begin_call() -> CallLog:
    """Start collecting provider calls for the LM call starting on this thread."""
    log = CallLog()
    _stack().append(log)
    return log


def end_call() -> CallLog | None:
    stack = _stack()
    return stack.pop() if stack else None


def current_call() -> CallLog | None:
    stack = _stack()
    return stack[-1] if stack else None


def report(call: ProviderCall) -> None:
    """Add a provider call to the LM call in progress on this thread, if any."""
    log = current_call()
    if log is not None:
        log.calls.append(call)
