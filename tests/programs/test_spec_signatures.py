"""Typed signatures: the allowlisted type parser and the DSPy signatures built from it."""

from typing import Any, Literal, Optional

import dspy
import pytest

from programs.spec import TypeExprError, compile_program, parse_type, program_input_fields

from .spec_support import make_registry, sim_lm


@pytest.mark.parametrize(
    ("text", "annotation", "canonical"),
    [
        ("str", str, "str"),
        ("int", int, "int"),
        ("float", float, "float"),
        ("bool", bool, "bool"),
        ("Any", Any, "Any"),
        ("list", list, "list"),
        ("list[str]", list[str], "list[str]"),
        ("List[int]", list[int], "list[int]"),
        ("dict[str, float]", dict[str, float], "dict[str, float]"),
        ("dict[str, list[int]]", dict[str, list[int]], "dict[str, list[int]]"),
        ("Optional[int]", Optional[int], "Optional[int]"),  # noqa: UP045
        ("int | None", Optional[int], "Optional[int]"),  # noqa: UP045
        ("None | list[str]", Optional[list[str]], "Optional[list[str]]"),  # noqa: UP045
        ("Literal['a', 'b']", Literal["a", "b"], "Literal['a', 'b']"),
        ('Literal["x", 1, -2.5, True]', Literal["x", 1, -2.5, True], "Literal['x', 1, -2.5, True]"),
        (" list[ str ] ", list[str], "list[str]"),
    ],
)
def test_it_parses_allowed_type_expressions(text: str, annotation: object, canonical: str) -> None:
    parsed = parse_type(text)
    assert parsed.annotation == annotation
    assert parsed.text == canonical


@pytest.mark.parametrize(
    "text",
    [
        "tuple[int]",
        "set[str]",
        "bytes",
        "os.path",
        "typing.List[str]",
        "__import__('os')",
        "Literal[str]",
        "Literal['a', 'a']",
        "Literal[None]",
        "list[int, str]",
        "Optional[int, str]",
        "int | str",
        "lambda: str",
        "str; import os",
        "[str]",
        "list[list[list[list[list[list[list[str]]]]]]]",
        "x" * 501,
        "",
        "dspy.Image",
    ],
)
def test_it_rejects_type_expressions_outside_the_allowlist(text: str) -> None:
    with pytest.raises(TypeExprError):
        parse_type(text)


def compile_one(signature: object, module: str = "Predict", **step: object) -> Any:
    pipeline = {"steps": [{"name": "main", "module": module, "signature": signature, **step}]}
    return compile_program(pipeline, {}, make_registry())


def test_it_builds_typed_string_signatures_with_the_resolved_types() -> None:
    program = compile_one("context: list[str], question -> answer: Literal['a', 'b'], score: Optional[float]")
    signature = program.main.signature
    assert signature.input_fields["context"].annotation == list[str]
    assert signature.input_fields["question"].annotation is str
    assert signature.output_fields["answer"].annotation == Literal["a", "b"]
    assert signature.output_fields["score"].annotation == Optional[float]  # noqa: UP045


def test_it_builds_object_signatures_with_descriptions() -> None:
    signature = {
        "inputs": {"ticket": {"type": "str", "desc": "the customer's message"}, "tags": "dict[str, int]"},
        "outputs": {"label": {"type": "Literal['billing', 'bug']"}, "notes": None},
    }
    built = compile_one(signature).main.signature
    assert list(built.input_fields) == ["ticket", "tags"]
    assert built.input_fields["ticket"].json_schema_extra["desc"] == "the customer's message"
    assert built.input_fields["tags"].annotation == dict[str, int]
    assert built.output_fields["label"].annotation == Literal["billing", "bug"]
    assert built.output_fields["notes"].annotation is str


def test_it_keeps_field_order_with_the_list_form_of_object_signatures() -> None:
    signature = {
        "inputs": [{"name": "zeta"}, {"name": "alpha", "type": "int"}],
        "outputs": [{"name": "out", "desc": "the result"}],
    }
    built = compile_one(signature).main.signature
    assert list(built.fields) == ["zeta", "alpha", "out"]
    assert built.output_fields["out"].json_schema_extra["desc"] == "the result"


def test_it_uses_the_step_instructions_or_dspy_default_ones() -> None:
    assert (
        compile_one("question -> answer", instructions="Be brief.").main.signature.instructions == "Be brief."
    )
    default = compile_one("question -> answer").main.signature.instructions
    assert default == dspy.Signature("question -> answer").instructions


def test_it_declares_fields_exactly_as_dspy_string_signatures_do() -> None:
    text = "context: list[str], question -> answer: str"
    ours, theirs = compile_one(text).main.signature, dspy.Signature(text)
    assert ours.equals(theirs)
    assert {name: field.annotation for name, field in ours.fields.items()} == {
        name: field.annotation for name, field in theirs.fields.items()
    }


def test_it_takes_program_input_types_from_the_fields_they_feed() -> None:
    pipeline = {
        "signature": "context: list[str], question, choice: Literal['a', 'b'], hint: Optional[int] -> answer"
    }
    assert program_input_fields(pipeline) == {
        "context": "list[str]",
        "question": "str",
        "choice": "Literal['a', 'b']",
        "hint": "Optional[int]",
    }


def test_typed_outputs_come_back_in_their_type() -> None:
    program = compile_one("question -> label: Literal['billing', 'bug'], count: int, tags: list[str]")
    with dspy.context(lm=sim_lm()):
        outputs = program.run({"question": "I was charged twice on my invoice"})
    assert outputs["label"] in ("billing", "bug")
    assert isinstance(outputs["count"], int)
    assert isinstance(outputs["tags"], list)
