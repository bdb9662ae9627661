"""Classify LM failures into what the execution layer should do with them.

- `rate_limit`: the provider said 429 — re-queue after its Retry-After, without spending an attempt;
- `transient`: timeouts, 5xx, connection errors, our database unavailable — retry with backoff;
- `permanent`: bad request, authentication, unparseable replies, invalid programs — fail now.
"""

from dataclasses import dataclass

import dspy
import psycopg
from django.db import InterfaceError, OperationalError
from dspy import lm15

from dspex_site.errors import DomainError
from llm.resilience import AdmissionError, CircuitOpenError
from llm.routing import UnknownProvider

RATE_LIMIT, TRANSIENT, PERMANENT = "rate_limit", "transient", "permanent"


@dataclass(frozen=True)
class Failure:
    kind: str  # rate_limit | transient | permanent
    type: str  # stable error type recorded on the execution, e.g. "provider_unavailable"
    message: str
    retry_after: float | None = None

    def as_error(self) -> dict:
        error: dict[str, str | float] = {"type": self.type, "message": self.message}
        if self.retry_after is not None:
            error["retry_after"] = self.retry_after
        return error


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def classify(exc: BaseException) -> Failure:
    """Map an exception raised while running a program to a Failure."""
    message = str(exc)[:1000] or type(exc).__name__
    for err in _chain(exc):
        if isinstance(err, AdmissionError):
            # Refused by our own breaker, rate limit or bulkhead before reaching the provider: like
            # a 429, come back after `retry_after` without spending an attempt.
            return Failure(RATE_LIMIT, err.reason, message, err.retry_after)
        if isinstance(err, OperationalError | InterfaceError | psycopg.OperationalError):
            # Our database, not the provider: a restart, or no pooled connection free in
            # DSPEX_DB_POOL_TIMEOUT_S (DSPy wraps what a callback or budget lookup raised).
            return Failure(TRANSIENT, "database_unavailable", message)
        if isinstance(err, UnknownProvider):
            return Failure(PERMANENT, "unknown_provider", str(err))
        # llm.budgets.BudgetExceeded; projects.keys.KeyRefused (work queued by a key since revoked)
        if isinstance(err, DomainError) and err.code in ("budget_exceeded", "key_revoked", "key_expired"):
            return Failure(PERMANENT, err.code, str(err))
        if isinstance(err, dspy.LMRateLimitError | lm15.RateLimitError):
            return Failure(RATE_LIMIT, "rate_limited", message, _retry_after(err))
        if isinstance(err, dspy.LMServerError | lm15.ServerError):
            return Failure(TRANSIENT, "provider_error", message)
        if isinstance(err, dspy.LMTransportError | lm15.TransportError | lm15.TimeoutError | TimeoutError):
            return Failure(TRANSIENT, "provider_unavailable", message)
        if isinstance(err, lm15.AuthError | lm15.BillingError | lm15.MissingCredentialError):
            return Failure(PERMANENT, "provider_auth", message)
        if isinstance(err, lm15.ContextLengthError):
            return Failure(PERMANENT, "context_length", message)
        if isinstance(err, lm15.InvalidRequestError | lm15.UnknownModelError | lm15.ConfigurationError):
            return Failure(PERMANENT, "provider_bad_request", message)
        if isinstance(err, dspy.utils.exceptions.AdapterParseError):
            return Failure(PERMANENT, "unparseable_response", message)
        if isinstance(err, ConnectionError):
            return Failure(TRANSIENT, "provider_unavailable", message)
    if isinstance(exc, dspy.LMError):
        retryable = dspy.is_retryable_lm_error(exc)
        return Failure(TRANSIENT if retryable else PERMANENT, "provider_error", message)
    return Failure(PERMANENT, "execution_error", f"{type(exc).__name__}: {message}")


# Why a call moved to its next fallback model (the trace's `fallbacks[].reason`, `llm.fallback`).
CIRCUIT_OPEN, RATE_LIMITED, TIMEOUT = "circuit_open", "rate_limited", "timeout"
CONNECTION_ERROR, SERVER_ERROR, CONTEXT_WINDOW = "connection_error", "server_error", "context_window"

_CONTEXT_WORDS = ("context length", "context_length", "context window", "maximum context")


def fallback_reason(exc: BaseException) -> str | None:
    """The reason a failed call may fall back to the next model, or None when it must not: a
    permanent error (bad request, authentication, an unparseable reply) fails the same anywhere."""
    for err in _chain(exc):
        if isinstance(err, AdmissionError):
            return CIRCUIT_OPEN if isinstance(err, CircuitOpenError) else RATE_LIMITED
        if isinstance(err, dspy.LMRateLimitError | lm15.RateLimitError):
            return RATE_LIMITED
        if isinstance(err, lm15.ContextLengthError):
            return CONTEXT_WINDOW
        if isinstance(err, lm15.TimeoutError | TimeoutError):
            return TIMEOUT
        if isinstance(err, dspy.LMServerError | lm15.ServerError):
            return SERVER_ERROR
        if isinstance(err, dspy.LMTransportError | lm15.TransportError | ConnectionError):
            return TIMEOUT if "timed out" in str(err).lower() else CONNECTION_ERROR
        if isinstance(err, lm15.InvalidRequestError) and any(w in str(err).lower() for w in _CONTEXT_WORDS):
            # Some OpenAI-compatible servers say so only in the message of a plain 400.
            return CONTEXT_WINDOW
    return None
