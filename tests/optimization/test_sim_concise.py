"""The simulated `sim/concise` model answers free text with short spans; `sim/default` does not."""

import dspy

from llm.sim import sim_lm

CONTEXT = ["Acme Tasks was founded by Maria Lopez in 2014. The company started in a garage in Austin."]


def answer(model: str, instructions: str = "Answer the question from the context.") -> str:
    program = dspy.Predict(dspy.Signature("context: list[str], question: str -> answer: str", instructions))
    with dspy.context(lm=sim_lm(model, cache=False)):
        return program(context=CONTEXT, question="Who founded Acme Tasks?").answer


def test_concise_answers_with_a_short_span():
    assert answer("sim/concise") == "Maria Lopez"
    assert answer("sim/default").startswith("Acme Tasks was founded by Maria Lopez")


def test_instructions_asking_for_sentences_win_over_the_concise_model():
    long = answer("sim/concise", "Answer in full sentences from the context.")
    assert len(long.split()) > 3
