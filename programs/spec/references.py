"""References inside a spec: `$input.<field>`, `$var.<name>` and `$<step>.<field>`.

Any string that starts with `$` is a reference; every other value is a literal. A literal
string that must start with `$` is written with a doubled sign (`$$5` is the text `$5`).
"""

import keyword
from dataclasses import dataclass

MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class Ref:
    """A parsed reference. `scope` is "input", "var" or a step name."""

    scope: str
    name: str

    @property
    def text(self) -> str:
        return f"${self.scope}.{self.name}"


def is_reference(value: object) -> bool:
    return isinstance(value, str) and value.startswith("$") and not value.startswith("$$")


def literal(value: object) -> object:
    """The literal a non-reference value stands for (undoing the `$$` escape)."""
    if isinstance(value, str) and value.startswith("$$"):
        return value[1:]
    return value


def parse_reference(text: str) -> Ref:
    """Parse `$scope.name`; raise ValueError with a readable reason."""
    body = text[1:]
    scope, dot, name = body.partition(".")
    if not dot or not scope or not name:
        raise ValueError(
            f"bad reference {_cut(text)}: expected $input.<field>, $var.<name> or $<step>.<field>"
        )
    for part in (scope, name):
        if not is_identifier(part):
            raise ValueError(f"bad reference {_cut(text)}: {_cut(part)} is not a valid name")
    return Ref(scope, name)


def is_identifier(name: object) -> bool:
    """A Python identifier, not a keyword, not private, of sane length."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.isidentifier()
        and name.isascii()
        and not keyword.iskeyword(name)
        and not name.startswith("_")
    )


def _cut(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")
