"""The one telemetry emitter. Code emits events where things happen; handlers turn them into
metrics, logs and spans. A failing handler is logged and never breaks the work that emitted.

Events: execution.{start,stop,exception}, module.execute.{start,stop},
llm.request.{start,stop}, llm.tokens, llm.fallback, cache.{hit,miss}, module.call.{start,stop,error}.
"""

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("dspex.telemetry")

Handler = Callable[[str, dict[str, float], dict[str, Any]], None]
_handlers: list[Handler] = []


def attach(handler: Handler) -> None:
    """Register a handler once (idempotent, so app reloads do not double-count)."""
    if handler not in _handlers:
        _handlers.append(handler)


def detach(handler: Handler) -> None:
    if handler in _handlers:
        _handlers.remove(handler)


def emit(
    event: str, measurements: dict[str, float] | None = None, metadata: dict[str, Any] | None = None
) -> None:
    measurements = measurements or {}
    metadata = metadata or {}
    for handler in tuple(_handlers):
        try:
            handler(event, measurements, metadata)
        except Exception:
            logger.exception("telemetry handler %r failed on %s", handler, event)
