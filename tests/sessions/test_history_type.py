"""`History` as a signature type: allowed only as the whole type of one input field, checked as
`{"messages": [...]}` JSON, and given to DSPy as a dspy.History, so a compiled program sends the
same messages as the same program written in plain DSPy."""

import dspy
import pytest
from dspy.utils import DummyLM

from programs.spec import ProgramSpecError, compile_program, program_input_fields, validate_program

CHAT = "question, history: History -> answer"
EARLIER = [{"question": "What is 2 + 2?", "answer": "4"}, {"question": "And 3 + 3?", "answer": "6"}]


@pytest.mark.parametrize(
    ("signature", "problem"),
    [
        ("question, history: Optional[History] -> answer", "whole type of a field"),
        ("question, history: list[History] -> answer", "whole type of a field"),
        ("question -> answer: History", "only be the type of an input field"),
        ("q, h: History, h2: History -> a", "at most one input field"),
    ],
)
def test_it_refuses_history_anywhere_but_as_one_input_s_type(signature: str, problem: str) -> None:
    errors = validate_program({"signature": signature}, {})
    assert errors and problem in str(errors[0]), errors


def test_object_form_signatures_take_history_too() -> None:
    pipeline = {
        "signature": {
            "inputs": [{"name": "question"}, {"name": "chat", "type": "History"}],
            "outputs": {"answer": "str"},
        }
    }
    assert validate_program(pipeline, {}) == []
    assert program_input_fields(pipeline) == {"question": "str", "chat": "History"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "expected a history"),
        ({"messages": "x"}, "expected a history"),
        ({"messages": [], "more": 1}, "expected a history"),
        ({"messages": [1]}, "messages are objects"),
    ],
)
def test_it_checks_a_history_input_s_shape(value: object, expected: str) -> None:
    program = compile_program({"signature": CHAT}, {})
    with pytest.raises(ProgramSpecError, match=expected) as caught:
        program.run({"question": "q", "history": value})
    assert caught.value.errors[0].path == "input.history"


def sent_messages(run: object) -> list[dict]:
    lm = DummyLM([{"answer": "10"}])
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        run(lm)
    return lm.history[-1]["messages"]


def test_a_compiled_history_program_sends_what_plain_dspy_sends() -> None:
    compiled = compile_program({"signature": CHAT}, {})
    ours = sent_messages(
        lambda lm: compiled.run(
            {"question": "Sum them?", "history": {"messages": EARLIER}}, None, lambda c: lm
        )
    )

    class Chat(dspy.Signature):
        question: str = dspy.InputField()
        history: dspy.History = dspy.InputField()
        answer: str = dspy.OutputField()

    plain = sent_messages(
        lambda lm: dspy.Predict(Chat)(question="Sum them?", history=dspy.History(messages=EARLIER))
    )
    assert ours == plain
    assert [m["role"] for m in ours] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "What is 2 + 2?" in ours[1]["content"] and "4" in ours[2]["content"]
