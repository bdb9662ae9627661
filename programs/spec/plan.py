"""What validation learns about a program: the plan the compiler builds modules from."""

from dataclasses import dataclass, field
from typing import Any

from programs.spec.options import OptionSpec
from programs.spec.signatures import SignatureSpec
from programs.spec.types import ParsedType
from programs.spec.variables import VarDecl


@dataclass(frozen=True)
class Setting:
    """A scalar setting: a literal, or a `Ref` to a variable resolved per execution."""

    path: str
    spec: OptionSpec
    value: Any


@dataclass
class StepPlan:
    """One validated step. `outputs` is None when the step's signature was unusable."""

    index: int
    path: str
    name: str
    module: str
    signature: SignatureSpec | None = None
    instructions: str | None = None
    bindings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Setting] = field(default_factory=dict)
    lm: dict[str, Setting] = field(default_factory=dict)
    tools: tuple[str, ...] = ()
    base: str = "Predict"
    custom_class: str | None = None
    custom_options: dict[str, Any] = field(default_factory=dict)
    demos: list[dict[str, Any]] = field(default_factory=list)
    outputs: tuple[str, ...] | None = None

    @property
    def uses_lm(self) -> bool:
        return self.module != "Retrieve"


@dataclass
class ProgramPlan:
    """A whole program: steps in order, output mapping, adapter, variables and input types."""

    steps: list[StepPlan] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    variables: dict[str, VarDecl] = field(default_factory=dict)
    input_types: dict[str, ParsedType] = field(default_factory=dict)
