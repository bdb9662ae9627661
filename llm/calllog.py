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
    """One request that reached a provider. `model` is the deployment that was asked
    (`<provider>/<model>`), which for an alias or a fallback differs from the model the program
    named; it is what the call is priced by."""

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
    # Routing: every fallback taken ({"model": the model given up, "reason"}), and the
    # deployment (`<provider>/<model>`) and provider that answered, from a provider or a cache entry.
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    deployment: str | None = None
    provider: str | None = None


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


def note_answer(deployment: str, provider: str) -> None:
    """The gateway names the deployment that answered the LM call in progress on this thread, so
    the LLM cache stores the answer under the model that produced it (log or not)."""
    _local.answer = (deployment, provider)
    log = current_call()
    if log is not None:
        log.deployment, log.provider = deployment, provider


def take_answer() -> tuple[str, str] | None:
    """The deployment (and provider) that answered the last LM call on this thread, once."""
    answer = getattr(_local, "answer", None)
    _local.answer = None
    return answer


def clear_answer() -> None:
    _local.answer = None


def note_fallback(model: str, reason: str) -> None:
    log = current_call()
    if log is not None:
        log.fallbacks.append({"model": model, "reason": reason})


def report(call: ProviderCall) -> None:
    """Add a provider call to the LM call in progress on this thread, if any."""
    log = current_call()
    if log is not None:
        log.calls.append(call)
