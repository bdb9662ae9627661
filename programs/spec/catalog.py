"""The step modules a spec may use and what each accepts and produces."""

import re
from dataclasses import dataclass, field

from programs.spec.options import OptionSpec

COMMON_STEP_KEYS = frozenset(
    {"name", "module", "signature", "instructions", "inputs", "lm", "config", "demos"}
)


@dataclass(frozen=True)
class ModuleKind:
    """One `module` value.

    `options` are the module's own scalar settings; `special` its structured keys (checked
    by dedicated code); `extra_outputs` the fields it adds before the signature's outputs
    (ChainOfThought's `reasoning`); `reserved_fields` names its signature must not use
    because the DSPy module adds a field of that name itself.
    """

    name: str
    options: dict[str, OptionSpec] = field(default_factory=dict)
    special: frozenset[str] = frozenset()
    extra_outputs: tuple[str, ...] = ()
    reserved_fields: frozenset[str] = frozenset()
    reserved_pattern: str | None = None
    fixed_signature: bool = False
    demos: bool = True

    @property
    def keys(self) -> frozenset[str]:
        keys = COMMON_STEP_KEYS | set(self.options) | self.special
        if self.fixed_signature:
            keys -= {"signature", "instructions", "demos", "lm", "config"}
        if not self.demos:
            keys -= {"demos"}
        return frozenset(keys)

    def is_reserved(self, field_name: str) -> bool:
        if field_name in self.reserved_fields:
            return True
        return bool(self.reserved_pattern and re.fullmatch(self.reserved_pattern, field_name))


_REWARDED = {
    "n": OptionSpec("int", 1, 20, default=3),
    "threshold": OptionSpec("number", default=1.0),
    "reward": OptionSpec("str", var=False, required=True, max_length=100),
}

MODULES: dict[str, ModuleKind] = {
    kind.name: kind
    for kind in (
        ModuleKind("Predict"),
        ModuleKind("ChainOfThought", extra_outputs=("reasoning",), reserved_fields=frozenset({"reasoning"})),
        ModuleKind(
            "ReAct",
            options={"max_iters": OptionSpec("int", 1, 50, default=20)},
            special=frozenset({"tools"}),
            extra_outputs=("reasoning", "trajectory"),
            reserved_fields=frozenset(
                {"reasoning", "trajectory", "next_thought", "next_tool_name", "next_tool_args", "max_iters"}
            ),
            demos=False,
        ),
        # BestOfN/Refine wrap a `base` module (Predict by default, or ChainOfThought).
        ModuleKind("BestOfN", options=dict(_REWARDED), special=frozenset({"base"})),
        ModuleKind(
            "Refine",
            options=dict(_REWARDED),
            special=frozenset({"base"}),
            reserved_fields=frozenset({"hint_"}),
        ),
        ModuleKind(
            "MultiChainComparison",
            options={"m": OptionSpec("int", 1, 10, var=False, default=3)},
            extra_outputs=("rationale",),
            reserved_fields=frozenset({"rationale", "reasoning", "completions"}),
            reserved_pattern=r"reasoning_attempt_\d+",
        ),
        ModuleKind(
            "Retrieve",
            options={
                "corpus": OptionSpec("str", required=True, max_length=200),
                "k": OptionSpec("int", 1, 100, default=3),
            },
            fixed_signature=True,
            demos=False,
        ),
        ModuleKind("Custom", special=frozenset({"class", "options"}), demos=False),
    )
}

BASES = ("Predict", "ChainOfThought")
RETRIEVE_SIGNATURE = "query: str -> passages: list[str]"
