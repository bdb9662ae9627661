"""Shared pieces of the pipeline-spec tests: a registry, deterministic LMs, an observer."""

import copy
from typing import Any

import dspy

from llm.sim import SimEngine
from programs.rewards import REWARDS
from programs.spec import Registry, SpecError
from programs.tools import calculator, clock

KEYWORD_EXTRACT = "programs.custom_modules.KeywordExtract"

FULL_PIPELINE: dict[str, Any] = {
    "lm": {"model": "$var.model", "temperature": "$var.temperature"},
    "adapter": "chat",
    "steps": [
        {
            "name": "retrieve",
            "module": "Retrieve",
            "corpus": "handbook",
            "k": "$var.k",
            "inputs": {"query": "$input.question"},
        },
        {
            "name": "answer",
            "module": "ChainOfThought",
            "signature": "context: list[str], question: str -> answer: str",
            "instructions": "Answer from the context only.",
            "inputs": {"context": "$retrieve.passages", "question": "$input.question"},
        },
    ],
    "outputs": {"answer": "$answer.answer"},
}

FULL_VARIABLES: dict[str, Any] = {
    "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2},
    "model": {"type": "choice", "choices": ["sim/default", "sim/smart"], "default": "sim/default"},
    "k": {"type": "int", "default": 3, "min": 1, "max": 20},
}


def full_pipeline() -> dict[str, Any]:
    return copy.deepcopy(FULL_PIPELINE)


def full_variables() -> dict[str, Any]:
    return copy.deepcopy(FULL_VARIABLES)


def fake_retriever(corpus: str, query: str, k: int) -> list[str]:
    return [f"{corpus} passage {index} about {query}" for index in range(k)]


def make_registry(**changes: Any) -> Registry:
    registry = Registry(
        tools={"calculator": calculator, "clock": clock},
        custom_modules={KEYWORD_EXTRACT},
        rewards=dict(REWARDS),
        retriever=fake_retriever,
    )
    for name, value in changes.items():
        setattr(registry, name, value)
    return registry


def sim_lm(model: str = "sim/default", **kwargs: Any) -> dspy.LM:
    return dspy.LM(model, engine=SimEngine(), num_retries=0, cache=False, **kwargs)


def by_path(errors: list[SpecError]) -> dict[str, str]:
    """path -> message (the last message when a path repeats)."""
    assert all(isinstance(error, SpecError) for error in errors)
    return {error.path: error.message for error in errors}


def assert_error(errors: list[SpecError], path: str, fragment: str) -> None:
    matching = [error for error in errors if error.path == path]
    assert matching, f"no error at {path}; got {[str(error) for error in errors]}"
    assert any(fragment in error.message for error in matching), [str(error) for error in matching]


class RecordingObserver:
    """Records observer calls as tuples, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def step_started(self, name: str, module: str, inputs: dict) -> None:
        self.events.append(("started", name, module, inputs))

    def step_finished(self, name: str, outputs: dict | None, error: BaseException | None) -> None:
        self.events.append(("finished", name, outputs, error))


class RecordingEngine(SimEngine):
    """The simulated provider, remembering the system prompt and messages of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def complete(self, request: Any) -> Any:
        self.requests.append(request)
        return super().complete(request)

    def prompt_text(self, index: int = -1) -> str:
        request = self.requests[index]
        system = (
            request.system
            if isinstance(request.system, str)
            else "".join(p.text for p in request.system or [])
        )
        return system + "\n" + "\n".join(message.text or "" for message in request.messages)
