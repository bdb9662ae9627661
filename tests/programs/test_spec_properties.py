"""Property tests: validate_program never raises, and a program it accepts always compiles."""

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from programs.spec import SpecError, compile_program, validate_program

from .spec_support import full_pipeline, full_variables, make_registry

REGISTRY = make_registry()
KEYS = st.sampled_from(
    [
        "steps",
        "signature",
        "name",
        "module",
        "inputs",
        "outputs",
        "lm",
        "model",
        "temperature",
        "type",
        "default",
        "min",
        "max",
        "choices",
        "k",
        "n",
        "reward",
        "tools",
        "class",
        "demos",
        "config",
        "adapter",
        "corpus",
        "m",
        "base",
        "instructions",
        "question",
        "answer",
        "options",
        "max_iters",
        "threshold",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "$input.question",
            "$var.k",
            "$var.temperature",
            "$answer.answer",
            "$retrieve.passages",
            "$x",
            "$",
            "$$",
            "question -> answer",
            "list[str]",
            "Literal['a']",
            "ChainOfThought",
            "Retrieve",
            "ReAct",
            "BestOfN",
            "Custom",
            "nonempty",
            "calculator",
            "float",
            "int",
            "choice",
            "chat",
            "json",
        ]
    )
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(KEYS | st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=30,
)


def assert_well_formed(errors: Any) -> None:
    assert isinstance(errors, list)
    for error in errors:
        assert isinstance(error, SpecError)
        assert error.path.startswith(("pipeline", "variables")), error
        assert isinstance(error.message, str) and error.message
        assert "internal error" not in error.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pipeline=JSON, variables=JSON)
def test_any_json_yields_a_list_of_located_errors(pipeline: Any, variables: Any) -> None:
    assert_well_formed(validate_program(pipeline, variables, REGISTRY))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(step=st.dictionaries(KEYS, JSON, max_size=8), variables=JSON)
def test_any_step_object_yields_a_list_of_located_errors(step: dict, variables: Any) -> None:
    assert_well_formed(validate_program({"steps": [step]}, variables, REGISTRY))


def containers(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list inside `value`, the root included."""
    found = [path] if isinstance(value, dict | list) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, item in items:
        found += containers(item, (*path, key))
    return found


def at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


RICH_PIPELINE = full_pipeline()
RICH_PIPELINE["steps"] += [
    {
        "name": "agent",
        "module": "ReAct",
        "signature": "question -> answer",
        "tools": ["calculator"],
        "max_iters": 2,
    },
    {
        "name": "best",
        "module": "BestOfN",
        "signature": "question, draft -> answer",
        "reward": "nonempty",
        "n": "$var.k",
        "inputs": {"question": "$input.question", "draft": "$agent.answer"},
        "config": {"temperature": 0.5},
    },
    {
        "name": "compare",
        "module": "MultiChainComparison",
        "signature": "question -> answer: Literal['yes', 'no']",
        "m": 2,
        "demos": [{"question": "q", "answer": "yes"}],
        "lm": {"model": "sim/smart"},
    },
]


@st.composite
def mutated_program(draw: st.DrawFn) -> tuple[dict, dict]:
    program = {"pipeline": copy.deepcopy(RICH_PIPELINE), "variables": full_variables()}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(containers(program)[1:]))
        target = at(program, path)
        if isinstance(target, dict):
            key = draw(st.sampled_from([*target, None]) if target else st.none()) or draw(KEYS)
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "delete":
                target.pop(key, None)
            else:
                target[key] = draw(JSON)
        elif target:
            index = draw(st.integers(0, len(target) - 1))
            target[index] = draw(JSON) if draw(st.booleans()) else target[index]
            if draw(st.booleans()):
                target.append(draw(JSON))
    return program["pipeline"], program["variables"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=mutated_program())
def test_a_mutated_valid_program_either_has_errors_or_compiles(program: tuple[dict, dict]) -> None:
    pipeline, variables = program
    errors = validate_program(pipeline, variables, REGISTRY)
    assert_well_formed(errors)
    if not errors:
        compile_program(pipeline, variables, REGISTRY)


def test_the_rich_program_used_for_mutations_is_valid() -> None:
    assert validate_program(RICH_PIPELINE, full_variables(), REGISTRY) == []


def test_deeply_nested_values_do_not_break_validation() -> None:
    deep: Any = "leaf"
    for _ in range(100_000):
        deep = [deep]
    nested: Any = {}
    for _ in range(100_000):
        nested = {"steps": nested}
    for pipeline in (
        deep,
        {"steps": deep},
        {"steps": [deep]},
        nested,
        {"signature": "q -> a", "outputs": {"a": deep}},
    ):
        assert_well_formed(validate_program(pipeline, {"x": deep}, REGISTRY))
    assert_well_formed(validate_program({"signature": "q -> a", "inputs": {"q": deep}}, nested, REGISTRY))


def test_huge_numbers_do_not_break_validation() -> None:
    huge = 10**5000
    pipeline = {"signature": "q -> a", "lm": {"temperature": huge, "max_tokens": huge}}
    variables = {"x": {"type": "float", "default": huge, "min": -huge}, "y": {"type": "int", "default": huge}}
    errors = validate_program(pipeline, variables, REGISTRY)
    assert_well_formed(errors)
    assert {
        "pipeline.lm.temperature",
        "pipeline.lm.max_tokens",
        "variables.x.min",
        "variables.y.default",
    } <= {error.path for error in errors}
