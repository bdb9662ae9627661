"""Management commands' answer to a domain error: a `CommandError` (non-zero exit, no traceback)."""

from collections.abc import Iterator
from contextlib import contextmanager

from django.core.management.base import CommandError

from dspex_site.errors import DomainError


def command_error(exc: DomainError) -> CommandError:
    """One line for a plain refusal; a headline and one line per located problem otherwise."""
    problems = exc.problems()
    if not problems:
        return CommandError(str(exc))
    headline = exc.code.replace("_", " ").capitalize()  # invalid_input -> "Invalid input"
    return CommandError(f"{headline}:\n  " + "\n  ".join(f"{p['path']}: {p['message']}" for p in problems))


@contextmanager
def domain_errors_as_command_errors() -> Iterator[None]:
    """`with domain_errors_as_command_errors(): ...` in a command's `handle`."""
    try:
        yield
    except DomainError as exc:
        raise command_error(exc) from exc
