"""The default registry: what specs may name when no registry is passed."""

from programs.custom_modules import KeywordExtract
from programs.spec import compile_program, default_registry, validate_program
from programs.tools import calculator, clock


def test_the_default_registry_holds_the_shipped_tools_modules_and_rewards() -> None:
    registry = default_registry()
    assert registry.tools == {"calculator": calculator, "clock": clock}
    assert "programs.custom_modules.KeywordExtract" in registry.custom_modules
    assert {"nonempty", "concise"} <= set(registry.rewards)
    # Retrieval over stored corpora is hooked in by the caching app at start-up.
    from programs.retrieval import retrieve

    assert registry.retriever is retrieve
    assert default_registry() is registry


def test_validation_and_compilation_use_the_default_registry_when_none_is_given() -> None:
    pipeline = {
        "steps": [
            {
                "name": "agent",
                "module": "ReAct",
                "signature": "question -> answer",
                "tools": ["calculator", "clock"],
            },
            {
                "name": "kw",
                "module": "Custom",
                "class": "programs.custom_modules.KeywordExtract",
                "signature": "answer -> summary",
                "inputs": {"answer": "$agent.answer"},
            },
        ]
    }
    assert validate_program(pipeline, {}) == []
    assert isinstance(compile_program(pipeline, {}).kw, KeywordExtract)
