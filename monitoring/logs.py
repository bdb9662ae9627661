"""Structured logging: every line carries the ids of the work it belongs to.

`log_context(execution_id=..., program_id=...)` binds ids for the current thread/task; the
filter copies them onto each record, and the JSON formatter writes one object per line.
"""

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

# The default is never mutated: log_context() always sets a new dict.
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "dspex_log_context",
    default={},  # noqa: B039
)


@contextlib.contextmanager
def log_context(**ids: object) -> Iterator[None]:
    """Bind ids (execution_id, program_id, task_id, request_id, ...) to log lines in this block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: object) -> contextvars.Token:
    """Bind ids until `unbind(token)`: for code that cannot use a `with` block (signal handlers)."""
    return _context.set({**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Attach the bound ids to the record (as attributes, and as text for plain formatting)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        record.dspex = ctx
        record.context = "".join(f" {k}={v}" for k, v in ctx.items())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, bound ids, exception."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "dspex", {}),
        }
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)
