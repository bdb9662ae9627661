"""Compiling specs to DSPy modules and running them: every module type, LMs, the observer."""

import json
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.teleprompt import LabeledFewShot
from dspy.utils import DummyLM

from programs.custom_modules import KeywordExtract
from programs.spec import PipelineModule, PipelineRuntimeError, ProgramSpecError, compile_program

from .spec_support import (
    KEYWORD_EXTRACT,
    RecordingEngine,
    RecordingObserver,
    full_pipeline,
    full_variables,
    make_registry,
    sim_lm,
)

QA = "question -> answer"


def one_step(module: str, signature: str = QA, **options: object) -> dict:
    return {"steps": [{"name": "main", "module": module, "signature": signature, **options}]}


def compile_spec(pipeline: dict, variables: dict | None = None, **registry_changes: object) -> PipelineModule:
    return compile_program(pipeline, variables or {}, make_registry(**registry_changes))


def sim_run(
    program: PipelineModule, inputs: dict, variables: dict | None = None, observer: object = None
) -> dict:
    return program.run(inputs, variables, lambda config: sim_lm(), observer)


# --- compiling -----------------------------------------------------------------------------------


def test_it_refuses_to_compile_an_invalid_program() -> None:
    pipeline = full_pipeline()
    pipeline["steps"][1]["inputs"]["context"] = "$retreive.passages"
    with pytest.raises(ProgramSpecError) as excinfo:
        compile_spec(pipeline, full_variables())
    assert [str(error) for error in excinfo.value.errors] == [
        "pipeline.steps[1].inputs.context: unknown step 'retreive'"
    ]


def test_each_step_is_an_attribute_named_after_the_step() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    assert isinstance(program.answer, dspy.ChainOfThought)
    assert program.step_names == ["retrieve", "answer"]
    assert [name for name, _ in program.named_predictors()] == ["answer.predict"]
    assert list(program.dump_state()) == ["answer.predict"]


@pytest.mark.parametrize(
    ("module", "options", "dspy_type", "predictors"),
    [
        ("Predict", {}, dspy.Predict, ["main"]),
        ("ChainOfThought", {}, dspy.ChainOfThought, ["main.predict"]),
        ("ReAct", {"tools": ["calculator"]}, dspy.ReAct, ["main.react", "main.extract.predict"]),
        ("BestOfN", {"reward": "nonempty"}, dspy.BestOfN, ["main.module"]),
        ("Refine", {"reward": "concise", "base": "ChainOfThought"}, dspy.Refine, ["main.module.predict"]),
        ("MultiChainComparison", {"m": 2}, dspy.Module, ["main.generate.predict", "main.compare.predict"]),
        ("Custom", {"class": KEYWORD_EXTRACT}, KeywordExtract, ["main.extract", "main.respond"]),
    ],
)
def test_it_compiles_and_runs_every_module_type(
    module: str, options: dict, dspy_type: type, predictors: list
) -> None:
    program = compile_spec(one_step(module, **options))
    assert isinstance(program.main, dspy_type)
    assert [name for name, _ in program.named_predictors()] == predictors
    outputs = sim_run(program, {"question": "What is 3 + 4?"})
    assert list(outputs) == ["answer"]
    assert isinstance(outputs["answer"], str) and outputs["answer"]


def test_react_steps_call_registry_tools() -> None:
    program = compile_spec(one_step("ReAct", tools=["calculator"], max_iters=3))
    lm = DummyLM(
        [
            {
                "next_thought": "Multiply.",
                "next_tool_name": "calculator",
                "next_tool_args": {"expression": "6 * 7"},
            },
            {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
            {"reasoning": "The tool said 42.", "answer": "42"},
        ]
    )
    observer = RecordingObserver()
    assert program.run({"question": "What is six times seven?"}, None, lambda config: lm, observer) == {
        "answer": "42"
    }
    outputs = observer.events[-1][2]
    assert outputs["trajectory"]["observation_0"] == "42"
    assert outputs["trajectory"]["tool_name_1"] == "finish"


def test_best_of_n_keeps_the_best_attempt_and_takes_n_from_a_variable() -> None:
    pipeline = one_step("BestOfN", n="$var.n", reward="concise", threshold=1.0)
    program = compile_spec(pipeline, {"n": {"type": "int", "default": 3, "min": 1, "max": 5}})
    long_answer = {"answer": " ".join(["word"] * 60)}

    def run(n: int) -> str:
        lm = DummyLM([long_answer, {"answer": "Brief."}, long_answer])
        return program.run({"question": "q"}, {"n": n}, lambda config: lm)["answer"]

    assert run(1) == long_answer["answer"]
    assert run(3) == "Brief."


class FailingEngine(RecordingEngine):
    def complete(self, request: object) -> object:
        self.requests.append(request)
        raise RuntimeError("provider down")


def test_best_of_n_failures_do_not_leak_into_the_next_execution() -> None:
    # DSPy's BestOfN decrements its fail_count on the instance; a shared compiled module must not.
    program = compile_spec(one_step("BestOfN", n=3, reward="nonempty"))
    engine = FailingEngine()
    lm = dspy.LM("sim/default", engine=engine, num_retries=0, cache=False)
    calls = []
    for _ in range(2):
        before = len(engine.requests)
        with pytest.raises(Exception, match="provider down"):
            program.run({"question": "q"}, None, lambda config: lm)
        calls.append(len(engine.requests) - before)
    assert calls[0] == calls[1] > 0


def test_multi_chain_comparison_compares_m_attempts() -> None:
    program = compile_spec(one_step("MultiChainComparison", m=3))
    engine = RecordingEngine()
    lm = dspy.LM("sim/default", engine=engine, num_retries=0, cache=False)
    observer = RecordingObserver()
    program.run({"question": "Why is the sky blue?"}, None, lambda config: lm, observer)
    assert "rationale" in observer.events[-1][2]
    assert "reasoning_attempt_3" in engine.prompt_text()


def test_retrieve_passes_corpus_and_k_to_the_retriever() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    observer = RecordingObserver()
    sim_run(program, {"question": "holidays"}, {"k": 2}, observer)
    assert observer.events[1] == (
        "finished",
        "retrieve",
        {"passages": ["handbook passage 0 about holidays", "handbook passage 1 about holidays"]},
        None,
    )


def test_retrieve_without_a_retriever_fails_naming_the_step() -> None:
    program = compile_spec(full_pipeline(), full_variables(), retriever=None)
    observer = RecordingObserver()
    with pytest.raises(PipelineRuntimeError, match="step 'retrieve': no retriever is configured") as excinfo:
        sim_run(program, {"question": "q"}, None, observer)
    assert excinfo.value.step == "retrieve"
    assert observer.events[-1] == ("finished", "retrieve", None, excinfo.value)


def test_custom_modules_get_the_signature_and_options() -> None:
    pipeline = one_step(
        "Custom", "text -> summary", **{"class": KEYWORD_EXTRACT, "options": {"max_keywords": 2}}
    )
    program = compile_spec(pipeline)
    assert program.main.max_keywords == 2
    assert list(program.main.respond.signature.input_fields) == ["text", "keywords"]
    observer = RecordingObserver()
    sim_run(program, {"text": "Invoices are sent monthly; refunds take five days."}, None, observer)
    assert len(observer.events[-1][2]["keywords"]) <= 2


def test_custom_module_construction_errors_become_spec_errors() -> None:
    pipeline = one_step("Custom", **{"class": KEYWORD_EXTRACT, "options": {"max_keywords": 0}})
    with pytest.raises(ProgramSpecError) as excinfo:
        compile_spec(pipeline)
    assert excinfo.value.errors[0].path == "pipeline.steps[0].class"
    assert "could not be constructed" in excinfo.value.errors[0].message


def test_inline_demos_are_loaded_into_the_predictor() -> None:
    demos = [{"question": "What colour is the sky on Mars?", "reasoning": "Dust.", "answer": "butterscotch"}]
    program = compile_spec(one_step("ChainOfThought", demos=demos))
    assert program.main.predict.demos[0].answer == "butterscotch"
    assert sim_run(program, {"question": "What colour is the sky on Mars?"}) == {"answer": "butterscotch"}


# --- LMs and adapters ------------------------------------------------------------------------------


def test_lm_for_gets_each_steps_resolved_lm_config() -> None:
    pipeline = {
        "lm": {"model": "sim/default", "temperature": "$var.temperature"},
        "steps": [
            {"name": "draft", "signature": QA, "lm": {"model": "sim/smart"}, "config": {"max_tokens": 100}},
            {"name": "polish", "signature": "answer -> final", "inputs": {"answer": "$draft.answer"}},
        ],
    }
    program = compile_spec(pipeline, {"temperature": {"type": "float", "default": 0.1}})
    answers = {"sim/smart": {"answer": "from smart"}, "sim/default": {"final": "from default"}}
    configs = []

    def lm_for(config: dict) -> dspy.BaseLM:
        configs.append(config)
        return DummyLM([answers[config["model"]]])

    assert program.run({"question": "q"}, {"temperature": 0.3}, lm_for) == {"final": "from default"}
    assert configs == [
        {"model": "sim/smart", "temperature": 0.3, "max_tokens": 100},
        {"model": "sim/default", "temperature": 0.3},
    ]


def test_it_applies_sampling_settings_to_the_context_lm_without_lm_for() -> None:
    program = compile_spec({"signature": QA, "lm": {"temperature": 0.7, "max_tokens": 64}})
    engine = RecordingEngine()
    with dspy.context(lm=dspy.LM("sim/default", engine=engine, num_retries=0, cache=False)):
        program.run({"question": "q"})
    assert (engine.requests[-1].config.temperature, engine.requests[-1].config.max_tokens) == (0.7, 64)


@pytest.mark.parametrize(("adapter", "marker"), [("chat", "[[ ## completed ## ]]"), ("json", "JSON")])
def test_it_runs_steps_with_the_chosen_adapter(adapter: str, marker: str) -> None:
    program = compile_spec({"signature": QA, "adapter": adapter})
    engine = RecordingEngine()
    program.run(
        {"question": "q"},
        None,
        lambda config: dspy.LM("sim/default", engine=engine, num_retries=0, cache=False),
    )
    assert marker in engine.prompt_text(0)


# --- the observer and outputs -----------------------------------------------------------------------


def test_the_observer_sees_every_step_in_order_with_json_values() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    observer = RecordingObserver()
    outputs = sim_run(program, {"question": "holidays"}, {"k": 1}, observer)
    assert [(event[0], event[1]) for event in observer.events] == [
        ("started", "retrieve"),
        ("finished", "retrieve"),
        ("started", "answer"),
        ("finished", "answer"),
    ]
    assert observer.events[0] == ("started", "retrieve", "Retrieve", {"query": "holidays"})
    assert observer.events[2] == (
        "started",
        "answer",
        "ChainOfThought",
        {"context": ["handbook passage 0 about holidays"], "question": "holidays"},
    )
    finished = observer.events[3]
    assert set(finished[2]) == {"reasoning", "answer"} and finished[3] is None
    assert finished[2]["answer"] == outputs["answer"]
    json.dumps([event[:3] for event in observer.events])


def test_the_observer_sees_a_failing_step_and_the_error_propagates() -> None:
    program = compile_spec({"signature": QA})
    observer = RecordingObserver()

    def lm_for(config: dict) -> dspy.BaseLM:
        return dspy.LM("sim/default", engine=FailingEngine(), num_retries=0, cache=False)

    with pytest.raises(Exception, match="provider down") as excinfo:
        program.run({"question": "q"}, None, lm_for, observer)
    assert observer.events == [
        ("started", "main", "Predict", {"question": "q"}),
        ("finished", "main", None, excinfo.value),
    ]


def test_run_checks_inputs_and_variables_first() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    with pytest.raises(ProgramSpecError) as excinfo:
        program.run({"questoin": "q"}, {"k": 0}, lambda config: sim_lm())
    assert [error.path for error in excinfo.value.errors] == ["input.question", "input.questoin"]
    with pytest.raises(ProgramSpecError) as excinfo:
        program.run({"question": "q"}, {"k": 0}, lambda config: sim_lm())
    assert [str(error) for error in excinfo.value.errors] == ["variables.k: 0 is below the minimum 1"]


def test_outputs_can_map_inputs_variables_and_literals() -> None:
    pipeline = {
        "signature": QA,
        "outputs": {"answer": "$main.answer", "asked": "$input.question", "k": "$var.k", "version": 2},
    }
    program = compile_spec(pipeline, {"k": {"type": "int", "default": 4}})
    outputs = sim_run(program, {"question": "q"})
    assert outputs == {"answer": outputs["answer"], "asked": "q", "k": 4, "version": 2}


# --- as a DSPy module -----------------------------------------------------------------------------


def test_it_can_be_called_like_any_dspy_module_with_variable_defaults() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    with dspy.context(lm=sim_lm()):
        prediction = program(question="holidays", unused="extra fields are ignored")
    assert isinstance(prediction, dspy.Prediction)
    assert list(prediction.keys()) == ["answer"]


def test_calling_it_without_a_required_input_is_a_spec_error() -> None:
    program = compile_spec({"signature": QA})
    with dspy.context(lm=sim_lm()), pytest.raises(ProgramSpecError, match=r"input\.question"):
        program(query="q")


def test_dspy_evaluate_and_optimizers_work_on_compiled_programs() -> None:
    program = compile_spec({"signature": QA})
    trainset = [
        dspy.Example(question="What colour is the sky on Mars?", answer="butterscotch").with_inputs(
            "question"
        )
    ]
    optimized = LabeledFewShot(k=1).compile(program, trainset=trainset)
    assert isinstance(optimized, PipelineModule)
    assert optimized.dump_state()["main"]["demos"][0]["answer"] == "butterscotch"
    assert program.main.demos == []

    def metric(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> bool:
        return prediction.answer == example.answer

    with dspy.context(lm=sim_lm()):
        result = dspy.Evaluate(devset=trainset, metric=metric, num_threads=1, display_progress=False)(
            optimized
        )
    assert result.score == 100.0


def test_deep_copies_share_the_plan_but_not_the_predictor_state() -> None:
    program = compile_spec(full_pipeline(), full_variables())
    twin = program.deepcopy()
    twin.answer.predict.demos = [dspy.Example(question="q", context=[], reasoning="r", answer="a")]
    assert program.answer.predict.demos == []
    assert twin.plan is program.plan
    assert sim_run(twin, {"question": "q"})["answer"]


def test_concurrent_runs_of_one_compiled_program_keep_their_own_variables() -> None:
    program = compile_spec(
        {"signature": QA, "lm": {"temperature": "$var.t"}}, {"t": {"type": "float", "default": 0}}
    )
    mismatches = []

    def run(index: int) -> dict:
        wanted = index / 10

        def lm_for(config: dict) -> dspy.BaseLM:
            if config["temperature"] != wanted:
                mismatches.append((wanted, config))
            return sim_lm()

        return program.run({"question": f"question {index}"}, {"t": wanted}, lm_for)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, range(16)))
    assert mismatches == []
    assert len(results) == 16
