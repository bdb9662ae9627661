"""What a program takes and returns, and checking an execution's inputs."""

import pytest

from programs.spec import ProgramSpecError, program_input_fields, program_output_fields, validate_inputs

from .spec_support import full_pipeline

TYPED = {
    "signature": "question: str, count: int, ratio: float, flag: bool, tags: list[str], "
    "meta: dict[str, int], label: Literal['a', 'b'], hint: Optional[str] -> answer"
}
GOOD_INPUT = {
    "question": "q",
    "count": 2,
    "ratio": 0.5,
    "flag": True,
    "tags": ["x"],
    "meta": {"a": 1},
    "label": "a",
}


def errors_of(pipeline: dict, inputs: object) -> list[str]:
    with pytest.raises(ProgramSpecError) as excinfo:
        validate_inputs(pipeline, inputs)
    return [str(error) for error in excinfo.value.errors]


def test_program_inputs_are_the_input_names_it_uses() -> None:
    assert program_input_fields(full_pipeline()) == {"question": "str"}
    assert program_input_fields({"signature": "question -> answer"}) == {"question": "str"}


def test_an_input_only_used_in_outputs_has_type_any() -> None:
    pipeline = {
        "signature": "question -> answer",
        "outputs": {"answer": "$main.answer", "echo": "$input.ticket_id"},
    }
    assert program_input_fields(pipeline) == {"question": "str", "ticket_id": "Any"}


def test_program_outputs_are_the_mapping_or_the_last_steps_outputs() -> None:
    assert program_output_fields(full_pipeline()) == ["answer"]
    pipeline = full_pipeline()
    del pipeline["outputs"]
    assert program_output_fields(pipeline) == ["answer"]  # not ChainOfThought's reasoning
    assert program_output_fields({"signature": "question -> answer, confidence: float"}) == [
        "answer",
        "confidence",
    ]


def test_it_accepts_inputs_of_the_declared_types() -> None:
    assert validate_inputs(TYPED, GOOD_INPUT) == {**GOOD_INPUT, "hint": None}
    assert validate_inputs(TYPED, {**GOOD_INPUT, "ratio": 1, "hint": None})["ratio"] == 1


def test_it_rejects_missing_inputs() -> None:
    assert errors_of(full_pipeline(), {}) == ["input.question: missing (expected str)"]


def test_it_rejects_extra_inputs() -> None:
    assert errors_of(full_pipeline(), {"question": "q", "questoin": "q"}) == [
        "input.questoin: unexpected field (inputs: question)"
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("question", 5, "expected a string, got 5"),
        ("count", True, "expected an integer, got True"),
        ("count", 1.5, "expected an integer, got 1.5"),
        ("ratio", "0.5", "expected a number, got '0.5'"),
        ("flag", 1, "expected a boolean, got 1"),
        ("tags", "x", "expected a list, got 'x'"),
        ("meta", [], "expected an object, got a list"),
        ("label", "c", "expected one of 'a', 'b', got 'c'"),
        ("hint", 3, "expected a string, got 3"),
    ],
)
def test_it_rejects_inputs_of_the_wrong_type(field: str, value: object, expected: str) -> None:
    assert errors_of(TYPED, {**GOOD_INPUT, field: value}) == [f"input.{field}: {expected}"]


@pytest.mark.parametrize("inputs", [None, [], "question", 3])
def test_it_rejects_inputs_that_are_not_an_object(inputs: object) -> None:
    assert errors_of(full_pipeline(), inputs) == ["input: must be an object mapping input fields to values"]
