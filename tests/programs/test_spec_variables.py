"""Program variables: declarations, defaults, an execution's overrides and `$var` at run time."""

import dspy
import pytest
from dspy.utils import DummyLM

from programs.spec import ProgramSpecError, compile_program, resolve_variables, validate_program

from .spec_support import by_path, full_pipeline, full_variables, make_registry


def spec_errors(excinfo: pytest.ExceptionInfo) -> list[str]:
    return [str(error) for error in excinfo.value.errors]


def test_it_resolves_defaults_when_nothing_is_overridden() -> None:
    assert resolve_variables(full_variables(), None) == {"temperature": 0.0, "model": "sim/default", "k": 3}


def test_it_applies_overrides_within_their_constraints() -> None:
    resolved = resolve_variables(full_variables(), {"temperature": 1.5, "model": "sim/smart", "k": 20})
    assert resolved == {"temperature": 1.5, "model": "sim/smart", "k": 20}


def test_it_accepts_ints_for_floats_and_resolves_them_as_floats() -> None:
    resolved = resolve_variables(full_variables(), {"temperature": 1})
    assert resolved["temperature"] == 1.0
    assert isinstance(resolved["temperature"], float)


def test_it_rejects_an_override_above_the_maximum() -> None:
    with pytest.raises(ProgramSpecError) as excinfo:
        resolve_variables(full_variables(), {"temperature": 3.5})
    assert spec_errors(excinfo) == ["variables.temperature: 3.5 is above the maximum 2"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"k": 0}, "variables.k: 0 is below the minimum 1"),
        ({"k": 2.5}, "variables.k: expected an integer, got 2.5"),
        ({"k": True}, "variables.k: expected an integer, got True"),
        ({"temperature": False}, "variables.temperature: expected a number, got False"),
        ({"temperature": "0.5"}, "variables.temperature: expected a number, got '0.5'"),
        ({"temperature": float("nan")}, "variables.temperature: expected a number, got nan"),
        ({"model": "gpt-5"}, "variables.model: 'gpt-5' is not one of 'sim/default', 'sim/smart'"),
        ({"seed": 1}, "variables.seed: unknown variable"),
    ],
)
def test_it_rejects_bad_overrides(overrides: dict, expected: str) -> None:
    with pytest.raises(ProgramSpecError) as excinfo:
        resolve_variables(full_variables(), overrides)
    assert spec_errors(excinfo) == [expected]


def test_it_reports_every_bad_override() -> None:
    with pytest.raises(ProgramSpecError) as excinfo:
        resolve_variables(full_variables(), {"k": 50, "model": 1, "nope": 2})
    assert [error.path for error in excinfo.value.errors] == [
        "variables.k",
        "variables.model",
        "variables.nope",
    ]


def test_it_rejects_overrides_that_are_not_an_object() -> None:
    with pytest.raises(ProgramSpecError) as excinfo:
        resolve_variables(full_variables(), ["temperature", 1])
    assert excinfo.value.errors[0].path == "variables"


def test_it_refuses_to_resolve_invalid_declarations() -> None:
    with pytest.raises(ProgramSpecError) as excinfo:
        resolve_variables({"k": {"type": "int", "default": "three"}}, {})
    assert spec_errors(excinfo) == ["variables.k.default: expected an integer, got 'three'"]


@pytest.mark.parametrize(
    ("declaration", "path", "fragment"),
    [
        ("float", "variables.x", "must be an object"),
        (
            {"type": "decimal", "default": 1},
            "variables.x.type",
            "must be one of float, int, str, bool, choice",
        ),
        ({"type": "float"}, "variables.x.default", "a default value is required"),
        ({"type": "float", "default": 3, "max": 2}, "variables.x.default", "3 is above the maximum 2"),
        ({"type": "float", "default": 0, "min": 2, "max": 1}, "variables.x.min", "min 2 is above max 1"),
        ({"type": "int", "default": 1, "min": 0.5}, "variables.x.min", "must be an integer"),
        ({"type": "int", "default": 1, "step": 1}, "variables.x.step", "unknown key for a int variable"),
        ({"type": "bool", "default": "yes"}, "variables.x.default", "expected a boolean"),
        (
            {"type": "str", "default": "abcd", "max_length": 3},
            "variables.x.default",
            "longer than the maximum length 3",
        ),
        ({"type": "str", "default": "a", "max_length": 0}, "variables.x.max_length", "between 1 and"),
        (
            {"type": "choice", "default": "c", "choices": ["a", "b"]},
            "variables.x.default",
            "'c' is not one of 'a', 'b'",
        ),
        ({"type": "choice", "default": "a", "choices": []}, "variables.x.choices", "must be a list of 1 to"),
        (
            {"type": "choice", "default": "a", "choices": ["a", "a"]},
            "variables.x.choices[1]",
            "duplicate choice",
        ),
        ({"type": "choice", "default": 1, "choices": [True, 1]}, None, None),
        (
            {"type": "choice", "default": True, "choices": [1, 2]},
            "variables.x.default",
            "True is not one of 1, 2",
        ),
        (
            {"type": "choice", "default": "a", "choices": ["a", None]},
            "variables.x.choices[1]",
            "choices must be",
        ),
        ({"type": "float", "default": 1, "description": 5}, "variables.x.description", "must be a string"),
    ],
)
def test_it_validates_variable_declarations(
    declaration: object, path: str | None, fragment: str | None
) -> None:
    errors = validate_program({"signature": "question -> answer"}, {"x": declaration}, make_registry())
    if path is None:
        assert errors == []
    else:
        assert fragment in by_path(errors)[path]


@pytest.mark.parametrize("variables", [[], "x", 5, True])
def test_it_rejects_variables_that_are_not_an_object(variables: object) -> None:
    errors = validate_program({"signature": "question -> answer"}, variables, make_registry())
    assert [error.path for error in errors] == ["variables"]


def test_it_accepts_no_variables_at_all() -> None:
    assert validate_program({"signature": "question -> answer"}, None, make_registry()) == []


def test_it_rejects_variable_names_that_are_not_identifiers() -> None:
    errors = validate_program(
        {"signature": "question -> answer"}, {"my-var": {"type": "int", "default": 1}}, make_registry()
    )
    assert [error.path for error in errors] == ["variables['my-var']"]


def test_it_passes_variable_values_into_lm_configs_and_step_options() -> None:
    configs, queries = [], []
    registry = make_registry(
        retriever=lambda corpus, query, k: queries.append((corpus, query, k)) or ["p"] * k
    )
    program = compile_program(full_pipeline(), full_variables(), registry)

    def lm_for(config: dict) -> dspy.BaseLM:
        configs.append(config)
        return DummyLM([{"reasoning": "r", "answer": "a"}])

    program.run({"question": "q"}, {"k": 5, "temperature": 0.7, "model": "sim/smart"}, lm_for)
    assert configs == [{"model": "sim/smart", "temperature": 0.7}]
    assert queries == [("handbook", "q", 5)]


def test_it_rejects_at_run_time_a_variable_value_that_does_not_fit_its_use() -> None:
    variables = {**full_variables(), "temperature": {"type": "float", "default": 0.5, "min": 0, "max": 5}}
    program = compile_program(full_pipeline(), variables, make_registry())
    with pytest.raises(ProgramSpecError) as excinfo:
        program.run({"question": "q"}, {"temperature": 3}, lambda config: DummyLM([{}]))
    assert spec_errors(excinfo) == [
        "pipeline.lm.temperature: variable 'temperature' does not fit here: 3.0 is above the maximum 2"
    ]


def test_it_feeds_variables_into_step_inputs() -> None:
    pipeline = {
        "steps": [
            {
                "name": "main",
                "signature": "question, tone -> answer",
                "inputs": {"question": "$input.question", "tone": "$var.tone"},
            }
        ]
    }
    variables = {"tone": {"type": "choice", "choices": ["formal", "casual"], "default": "formal"}}
    program = compile_program(pipeline, variables, make_registry())
    lm = DummyLM([{"answer": "a"}])
    program.run({"question": "q"}, {"tone": "casual"}, lambda config: lm)
    assert "casual" in lm.history[-1]["messages"][-1]["content"]
