"""DSPy state moves both ways between compiled specs and plain DSPy modules of the same shape."""

import json

import dspy
import pytest

from programs.spec import PipelineModule, StateMismatchError, compile_program
from programs.tools import calculator

from .spec_support import (
    RecordingEngine,
    fake_retriever,
    full_pipeline,
    full_variables,
    make_registry,
    sim_lm,
)

MARS = "What colour is the sky on Mars?"
# The simulated provider answers a question that equals a demo's inputs with the demo's outputs.
MARS_DEMO = dspy.Example(
    question=MARS, context=fake_retriever("handbook", MARS, 3), reasoning="Dust.", answer="butterscotch"
)
NEW_INSTRUCTIONS = "Answer in lowercase, using only the context."


class PlainRag(dspy.Module):
    """The documented full example written by hand in plain DSPy."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.ChainOfThought(
            dspy.Signature(
                "context: list[str], question: str -> answer: str", "Answer from the context only."
            )
        )

    def forward(self, question: str) -> dspy.Prediction:
        context = fake_retriever("handbook", question, 3)
        return self.answer(context=context, question=question)


def compiled_rag() -> PipelineModule:
    return compile_program(full_pipeline(), full_variables(), make_registry())


def test_fresh_programs_have_identical_state() -> None:
    assert compiled_rag().dump_state() == PlainRag().dump_state()


def test_plain_dspy_state_loads_into_a_compiled_program_and_changes_its_answers() -> None:
    plain = PlainRag()
    plain.answer.predict.demos = [MARS_DEMO]
    plain.answer.predict.signature = plain.answer.predict.signature.with_instructions(NEW_INSTRUCTIONS)
    program = compiled_rag()
    engine = RecordingEngine()
    lm = dspy.LM("sim/default", engine=engine, num_retries=0, cache=False)
    before = program.run({"question": MARS}, None, lambda config: lm)

    program.load_state(plain.dump_state())

    assert program.dump_state() == plain.dump_state()
    after = program.run({"question": MARS}, None, lambda config: lm)
    assert before != {"answer": "butterscotch"}
    assert after == {"answer": "butterscotch"}
    assert NEW_INSTRUCTIONS in engine.prompt_text()


def test_compiled_program_state_loads_into_plain_dspy_and_changes_its_answers() -> None:
    pipeline = full_pipeline()
    pipeline["steps"][1]["demos"] = [dict(MARS_DEMO)]
    program = compile_program(pipeline, full_variables(), make_registry())
    plain = PlainRag()
    with dspy.context(lm=sim_lm()):
        before = plain(question=MARS).answer
        plain.load_state(program.dump_state())
        after = plain(question=MARS).answer
    assert before != "butterscotch"
    assert after == "butterscotch"


def test_optimized_state_round_trips_through_json() -> None:
    program = compiled_rag()
    program.answer.predict.demos = [MARS_DEMO]
    state = json.loads(json.dumps(program.dump_state()))
    fresh = compiled_rag().load_state(state)
    assert fresh.dump_state() == program.dump_state()


def test_react_state_interoperates_with_plain_react() -> None:
    pipeline = {
        "steps": [
            {"name": "agent", "module": "ReAct", "signature": "question -> answer", "tools": ["calculator"]}
        ]
    }
    program = compile_program(pipeline, {}, make_registry())

    class PlainAgent(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.agent = dspy.ReAct("question -> answer", tools=[calculator])

    plain = PlainAgent()
    assert program.dump_state() == plain.dump_state()
    plain.agent.extract.predict.signature = plain.agent.extract.predict.signature.with_instructions(
        "Be exact."
    )
    program.load_state(plain.dump_state())
    assert program.agent.extract.predict.signature.instructions == "Be exact."


def test_it_never_loads_lm_settings_from_a_state() -> None:
    plain = PlainRag()
    plain.answer.predict.lm = dspy.LM(
        "openai/gpt-4o-mini", api_base="http://attacker.example/v1", api_key="sk-x"
    )
    state = plain.dump_state()
    assert state["answer.predict"]["lm"]["model"] == "openai/gpt-4o-mini"

    program = compiled_rag()
    program.load_state(state, allow_unsafe_lm_state=True)

    assert program.answer.predict.lm is None
    assert program.dump_state()["answer.predict"]["lm"] is None


def test_it_never_dumps_lm_settings() -> None:
    program = compiled_rag()
    program.answer.predict.lm = sim_lm()
    assert program.dump_state()["answer.predict"]["lm"] is None


def test_it_rejects_a_state_of_another_shape() -> None:
    other = {"main.predict": PlainRag().dump_state()["answer.predict"]}
    with pytest.raises(
        StateMismatchError, match=r"missing \['answer.predict'\], unexpected \['main.predict'\]"
    ):
        compiled_rag().load_state(other)
    with pytest.raises(StateMismatchError):
        compiled_rag().load_state(["not", "a", "state"])


def test_a_malformed_state_is_refused_without_changing_the_program() -> None:
    program = compiled_rag()
    program.answer.predict.demos = [MARS_DEMO]
    before = program.dump_state()
    valid = program.dump_state()["answer.predict"]
    for entry in (
        {},
        None,
        {**valid, "demos": "x"},
        {**valid, "signature": {"instructions": 5}},
        {**valid, "config": {"api_base": "http://attacker.example"}},
        {**valid, "callbacks": []},
        {**valid, "signature": {"instructions": "x", "fields": [{"prefix": 1}]}},
    ):
        with pytest.raises(StateMismatchError):
            program.load_state({"answer.predict": entry})
    assert program.dump_state() == before


def test_a_non_strict_load_keeps_predictors_the_state_does_not_mention() -> None:
    program = compiled_rag()
    before = program.dump_state()
    program.load_state({"unrelated.predict": {}}, strict=False)
    assert program.dump_state() == before
