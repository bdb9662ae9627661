"""Nothing in a spec can import code, evaluate code or point an LM somewhere else."""

import importlib
import sys
import time

import dspy
import pytest

from programs.spec import ProgramSpecError, compile_program, validate_program
from programs.tools import calculator

from .spec_support import by_path, make_registry


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every importlib.import_module call made while the test runs."""
    seen: list[str] = []
    real = importlib.import_module

    def spy(name: str, package: str | None = None) -> object:
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", spy)
    return seen


def custom(class_path: str) -> dict:
    return {
        "steps": [{"name": "main", "module": "Custom", "class": class_path, "signature": "text -> summary"}]
    }


@pytest.mark.parametrize(
    "class_path",
    [
        "os.system",
        "builtins.eval",
        "subprocess.Popen",
        "programs.custom_modules.KeywordExtract.__init__",
        "programs.custom_modules",
        "evil_never_imported_module.Thing",
    ],
)
def test_it_rejects_custom_classes_outside_the_allowlist_without_importing_them(
    class_path: str, imports: list
) -> None:
    errors = validate_program(custom(class_path), {}, make_registry())
    assert "is not an allowed custom module" in by_path(errors)["pipeline.steps[0].class"]
    with pytest.raises(ProgramSpecError):
        compile_program(custom(class_path), {}, make_registry())
    assert imports == []
    assert "evil_never_imported_module" not in sys.modules


def test_an_allowlisted_path_that_is_not_a_module_class_is_refused_at_compile_time() -> None:
    with pytest.raises(ProgramSpecError, match=r"not a dspy\.Module subclass"):
        compile_program(custom("os.getcwd"), {}, make_registry(custom_modules={"os.getcwd"}))


@pytest.mark.parametrize(
    "type_text",
    [
        "__import__('os')",
        "os.path",
        "os",
        "subprocess.Popen",
        "eval('str')",
        "list[os.system]",
        "Literal[__import__('os')]",
        "typing.List[str]",
        "dspy.Image",
        "str.__class__",
        "exec",
    ],
)
def test_it_rejects_type_names_outside_the_allowlist_without_importing(type_text: str, imports: list) -> None:
    pipeline = {"signature": f"question -> answer: {type_text}"}
    errors = validate_program(pipeline, {}, make_registry())
    assert [error.path for error in errors] == ["pipeline.signature"]
    object_form = {"signature": {"inputs": {"question": {"type": type_text}}, "outputs": {"answer": "str"}}}
    assert [e.path for e in validate_program(object_form, {}, make_registry())] == [
        "pipeline.signature.inputs.question.type"
    ]
    assert imports == []


def test_signatures_never_go_through_dspys_own_string_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    # DSPy's parser imports unknown names with importlib; ours must not depend on it at all.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("DSPy's string signature parser was used")

    monkeypatch.setattr("dspy.signatures.signature._parse_signature", refuse)
    program = compile_program(
        {"signature": "context: list[str], question -> answer: Literal['a', 'b']"}, {}, make_registry()
    )
    assert program.main.signature.output_fields["answer"].annotation.__args__ == ("a", "b")


@pytest.mark.parametrize("tool", ["eval", "exec", "__import__", "os.system", "programs.tools.calculator"])
def test_it_rejects_tools_outside_the_registry(tool: str) -> None:
    pipeline = {
        "steps": [{"name": "agent", "module": "ReAct", "signature": "question -> answer", "tools": [tool]}]
    }
    assert (
        "unknown tool"
        in by_path(validate_program(pipeline, {}, make_registry()))["pipeline.steps[0].tools[0]"]
    )


@pytest.mark.parametrize("reward", ["os.system", "eval", "programs.rewards.nonempty"])
def test_it_rejects_rewards_outside_the_registry(reward: str) -> None:
    pipeline = {
        "steps": [{"name": "best", "module": "BestOfN", "signature": "question -> answer", "reward": reward}]
    }
    assert (
        "unknown reward"
        in by_path(validate_program(pipeline, {}, make_registry()))["pipeline.steps[0].reward"]
    )


@pytest.mark.parametrize("key", ["api_base", "base_url", "api_key", "engine", "model_list", "extra_headers"])
def test_a_spec_cannot_point_an_lm_at_another_endpoint_or_key(key: str) -> None:
    errors = validate_program(
        {"signature": "question -> answer", "lm": {key: "http://attacker.example"}}, {}, make_registry()
    )
    assert "unknown setting" in by_path(errors)[f"pipeline.lm.{key}"]


@pytest.mark.parametrize(
    ("pipeline", "path"),
    [
        ({"steps": [{"name": "__class__", "signature": "q -> a"}]}, "pipeline.steps[0].name"),
        ({"signature": "__class__ -> a"}, "pipeline.signature"),
        ({"signature": "q -> a", "inputs": {"q": "$input.__dict__"}}, "pipeline.inputs.q"),
        ({"signature": "q -> a", "outputs": {"a": "$__class__.a"}}, "pipeline.outputs.a"),
    ],
)
def test_dunder_names_are_rejected_everywhere(pipeline: dict, path: str) -> None:
    assert path in by_path(validate_program(pipeline, {}, make_registry()))


def test_huge_strings_are_rejected_quickly() -> None:
    started = time.perf_counter()
    huge = "x" * 5_000_000
    pipelines = [
        {"signature": huge},
        {"signature": "question -> answer: " + "list[" * 1000 + "str" + "]" * 1000},
        {"signature": "question -> answer", "instructions": huge},
        {"signature": {"inputs": {huge: "str"}, "outputs": {"answer": huge}}},
    ]
    for pipeline in pipelines:
        assert validate_program(pipeline, {huge: {"type": "str", "default": huge}}, make_registry())
    assert time.perf_counter() - started < 2


def test_the_calculator_never_evaluates_code_or_hangs() -> None:
    started = time.perf_counter()
    assert calculator("9**9**9").startswith("Error")
    assert calculator("__import__('os').system('true')").startswith("Error")
    assert calculator("(1).__class__").startswith("Error")
    assert time.perf_counter() - started < 1


def test_a_predictor_lm_from_the_spec_is_impossible() -> None:
    program = compile_program(
        {"signature": "question -> answer", "lm": {"model": "sim/x"}}, {}, make_registry()
    )
    assert all(predictor.lm is None for predictor in program.predictors())
    assert isinstance(program.main, dspy.Predict)
