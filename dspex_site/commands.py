"""Management commands' answer to a domain error: a `CommandError` (non-zero exit, no traceback)."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.exceptions import ValidationError
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


# --- `--project <name>` ---------------------------------------------------------------------


def add_project_argument(parser: Any, *, creates: bool = False) -> None:
    """`--project <name>`: where names are looked up (or, for `creates`, where rows are made)."""
    help_text = (
        "the project to create in (default: `default`)"
        if creates
        else "look the names up in this project only (default: any project)"
    )
    parser.add_argument("--project", default=None, help=help_text)


def project_named(name: str | None) -> Any:
    """The project of `--project` (`default` when not given, created if missing); a CommandError
    naming it when there is none."""
    from projects import access
    from projects.models import Project

    try:
        return access.resolve(name)
    except Project.DoesNotExist:
        raise CommandError(f"No project named '{name}'.") from None


def in_project(queryset: Any, name: str | None) -> Any:
    """`queryset` narrowed to the project of `--project` (unchanged without one)."""
    return queryset if name is None else queryset.filter(project=project_named(name))


def by_name_or_id(queryset: Any, ref: str, project: str | None, noun: str) -> Any:
    """The row named `ref` (or with id `ref`) in the project of `--project`, else in any project;
    a CommandError when there is none, or when several projects have one of that name (names
    are unique per project, not site-wide)."""
    rows = in_project(queryset, project)
    named = list(rows.filter(name=ref).select_related("project")[:2])
    if len(named) > 1:
        where = ", ".join(sorted(row.project.name for row in rows.filter(name=ref).select_related("project")))
        raise CommandError(f"Several projects have a {noun} named '{ref}' ({where}): give --project.")
    if named:
        return named[0]
    try:
        found = rows.filter(id=ref).first()
    except (ValueError, TypeError, ValidationError):  # not an id of that kind
        found = None
    if found is None:
        where = f" in project '{project}'" if project else ""
        raise CommandError(f"No {noun} named or with id '{ref}'{where}.")
    return found
