"""Errors of the pipeline spec: where in the JSON something is wrong, and what."""

from collections.abc import Iterable
from dataclasses import dataclass

from dspex_site.errors import DomainError


@dataclass(frozen=True)
class SpecError:
    """One problem in a program, located by its JSON path (`pipeline.steps[1].inputs.context`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class ProgramSpecError(DomainError):
    """A program, its variables or its inputs are invalid; `.errors` lists every problem.

    `code` says whose fault it is: `invalid_input` when only the execution's input is wrong,
    `invalid_variables` when only its input or variable overrides are, else `invalid_program`.
    """

    def __init__(self, errors: list[SpecError]) -> None:
        self.errors = list(errors)
        roots = {error.path.split(".", 1)[0].split("[", 1)[0] for error in self.errors}
        if roots and roots <= {"input"}:
            self.code = "invalid_input"
        elif roots and roots <= {"variables", "input"}:
            self.code = "invalid_variables"
        else:
            self.code = "invalid_program"
        super().__init__("; ".join(str(error) for error in self.errors) or "invalid program")

    def summary(self, shown: int = 3) -> str:
        """The first few problems, for a one-line message."""
        text = "; ".join(str(error) for error in self.errors[:shown]) or "Invalid program."
        if len(self.errors) > shown:
            text += f" (and {len(self.errors) - shown} more)"
        return text

    def problems(self) -> list[dict[str, str]]:
        return [error.as_dict() for error in self.errors]


class PipelineRuntimeError(RuntimeError):
    """A step could not run for a reason of our own making (not an LM or provider error)."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        super().__init__(f"step '{step}': {message}")


class Errors:
    """Collects SpecErrors while walking a spec; `add` takes the path as its first argument."""

    def __init__(self) -> None:
        self.items: list[SpecError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(SpecError(path, message))

    def __len__(self) -> int:
        return len(self.items)


def join(path: str, key: str | int) -> str:
    """`join("pipeline.steps", 1)` -> `pipeline.steps[1]`; `join("variables", "k")` -> `variables.k`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def show(value: object, limit: int = 60) -> str:
    """A short, safe rendering of user-supplied JSON for messages.

    Containers are described rather than printed (a deeply nested list would make `repr`
    recurse), and strings and huge integers are cut, so no input can flood or break a message.
    """
    if isinstance(value, str):
        text = repr(value[:limit])
        return text if len(value) <= limit else text[:-1] + "...'"
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**18 else "a very large integer"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def join_key(path: str, key: object) -> str:
    """Like `join`, for a key taken from user JSON: odd or huge keys are shown quoted and cut."""
    if isinstance(key, str) and 0 < len(key) <= 64 and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{show(key, 40)}]"


def listing(names: Iterable[object], limit: int = 12) -> str:
    """`a, b, c` for a message, sorted and cut after `limit` names."""
    ordered = sorted(str(name) for name in names)
    if not ordered:
        return "none"
    more = f", ... ({len(ordered) - limit} more)" if len(ordered) > limit else ""
    return ", ".join(ordered[:limit]) + more
