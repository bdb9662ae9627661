"""validate_program: every error, each with its exact JSON path."""

import pytest

from programs.spec import ProgramSpecError, SpecError, normalize_pipeline, validate_program

from .spec_support import assert_error, by_path, full_pipeline, full_variables, make_registry


def validate(pipeline, variables=None, **registry_changes):
    return validate_program(
        pipeline, full_variables() if variables is None else variables, make_registry(**registry_changes)
    )


def two_steps(**second: object) -> dict:
    return {
        "steps": [
            {"name": "draft", "module": "Predict", "signature": "question -> draft"},
            {"name": "final", "module": "Predict", "signature": "draft, question -> answer", **second},
        ]
    }


def test_it_accepts_the_documented_full_example() -> None:
    assert validate(full_pipeline()) == []


def test_it_accepts_the_one_step_shorthand() -> None:
    assert validate({"signature": "question -> answer"}, {}) == []


def test_it_expands_the_shorthand_to_a_main_predict_step() -> None:
    full = normalize_pipeline(
        {"signature": "question -> answer", "lm": {"temperature": 0.2}, "instructions": "Be brief."}
    )
    assert full == {
        "lm": {"temperature": 0.2},
        "steps": [
            {
                "name": "main",
                "module": "Predict",
                "signature": "question -> answer",
                "instructions": "Be brief.",
            }
        ],
    }
    assert normalize_pipeline(full) is full


def test_it_reports_shorthand_errors_at_the_top_level_path() -> None:
    errors = validate({"signature": "question -> answer: lst[str]", "module": "Predictt"}, {})
    assert set(by_path(errors)) == {"pipeline.signature", "pipeline.module"}


def test_spec_error_renders_path_and_message() -> None:
    error = SpecError("pipeline.steps[1].inputs.context", "unknown step 'retreive'")
    assert str(error) == "pipeline.steps[1].inputs.context: unknown step 'retreive'"
    assert ProgramSpecError([error]).errors == [error]


@pytest.mark.parametrize("pipeline", [None, [], 5, "question -> answer", True])
def test_it_rejects_a_pipeline_that_is_not_an_object(pipeline: object) -> None:
    assert_error(validate(pipeline), "pipeline", "must be an object")


def test_it_rejects_a_pipeline_without_steps_or_signature() -> None:
    assert_error(validate({"outputs": {}}), "pipeline", "needs")


@pytest.mark.parametrize("steps", [[], {}, "main", [{}] * 51])
def test_it_rejects_steps_that_are_not_a_short_list(steps: object) -> None:
    assert_error(validate({"steps": steps}), "pipeline.steps", "must be a list")


def test_it_rejects_a_step_that_is_not_an_object() -> None:
    assert_error(validate({"steps": ["question -> answer"]}), "pipeline.steps[0]", "must be an object")


def test_it_rejects_unknown_step() -> None:
    pipeline = full_pipeline()
    pipeline["steps"][1]["inputs"]["context"] = "$retreive.passages"
    errors = validate(pipeline)
    assert [str(error) for error in errors] == ["pipeline.steps[1].inputs.context: unknown step 'retreive'"]


def test_it_rejects_a_reference_to_a_later_step() -> None:
    pipeline = two_steps()
    pipeline["steps"][0]["inputs"] = {"question": "$final.answer"}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].inputs.question", "runs after this one")


def test_it_rejects_a_step_that_uses_its_own_outputs() -> None:
    pipeline = two_steps(inputs={"draft": "$final.answer", "question": "$input.question"})
    assert_error(validate(pipeline, {}), "pipeline.steps[1].inputs.draft", "cannot use its own outputs")


def test_it_rejects_an_unknown_output_field_of_an_earlier_step() -> None:
    pipeline = two_steps(inputs={"draft": "$draft.drafts", "question": "$input.question"})
    assert_error(
        validate(pipeline, {}), "pipeline.steps[1].inputs.draft", "has no output 'drafts' (outputs: draft)"
    )


def test_it_lets_later_steps_use_chain_of_thought_reasoning_but_not_predict_reasoning() -> None:
    pipeline = two_steps(inputs={"draft": "$draft.reasoning", "question": "$input.question"})
    assert_error(validate(pipeline, {}), "pipeline.steps[1].inputs.draft", "has no output 'reasoning'")
    pipeline["steps"][0]["module"] = "ChainOfThought"
    assert validate(pipeline, {}) == []


def test_it_rejects_a_malformed_reference() -> None:
    pipeline = two_steps(inputs={"draft": "$draft", "question": "$input.question.text"})
    errors = by_path(validate(pipeline, {}))
    assert "bad reference" in errors["pipeline.steps[1].inputs.draft"]
    assert "bad reference" in errors["pipeline.steps[1].inputs.question"]


def test_it_treats_a_doubled_dollar_as_a_literal() -> None:
    pipeline = two_steps(inputs={"draft": "$$5 off", "question": "$input.question"})
    assert validate(pipeline, {}) == []


def test_it_rejects_duplicate_step_names() -> None:
    pipeline = two_steps()
    pipeline["steps"][1]["name"] = "draft"
    assert_error(validate(pipeline, {}), "pipeline.steps[1].name", "duplicate step name 'draft'")


@pytest.mark.parametrize("name", ["1st", "my-step", "_private", "class", "", 7, None, "x" * 65, "é"])
def test_it_rejects_invalid_step_names(name: object) -> None:
    pipeline = {"steps": [{"name": name, "signature": "question -> answer"}]}
    assert "pipeline.steps[0].name" in by_path(validate(pipeline, {}))


@pytest.mark.parametrize(
    "name",
    [
        "forward",
        "history",
        "callbacks",
        "named_predictors",
        "dump_state",
        "load_state",
        "run",
        "plan",
        "lm_for",
        "input",
        "var",
        "self",
        "step_names",
        "deepcopy",
    ],
)
def test_it_rejects_step_names_that_collide_with_module_attributes(name: str) -> None:
    pipeline = {"steps": [{"name": name, "signature": "question -> answer"}]}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].name", "is reserved")


def test_it_rejects_unknown_module() -> None:
    pipeline = {"steps": [{"name": "main", "module": "Predictt", "signature": "question -> answer"}]}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].module", "unknown module 'Predictt'")


def test_it_rejects_unknown_step_keys() -> None:
    pipeline = {"steps": [{"name": "main", "signature": "question -> answer", "toolz": ["calculator"]}]}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].toolz", "unknown key for a Predict step")


def test_it_rejects_unknown_top_level_keys() -> None:
    pipeline = {**two_steps(), "output": {"answer": "$final.answer"}}
    assert_error(validate(pipeline, {}), "pipeline.output", "unknown key")


def test_it_requires_a_signature() -> None:
    assert_error(validate({"steps": [{"name": "main"}]}, {}), "pipeline.steps[0].signature", "required")


@pytest.mark.parametrize(
    ("signature", "fragment"),
    [
        ("question -> answer: lst[str]", "unknown generic type 'lst'"),
        ("question -> answer: strr", "unknown type 'strr'"),
        ("question answer", 'exactly one "->"'),
        ("a -> b -> c", 'exactly one "->"'),
        ("question ->", "at least one output"),
        ("question -> answer: dict[int, str]", "dict keys must be str"),
        ("question -> answer: Literal[]", "not a type expression"),
        ("question, question -> answer", "more than once"),
        ("question -> question", "more than once"),
        ("question -> answer: Literal['a'", "unbalanced"),
        ("my question -> answer", "not a valid field name"),
        ("self -> answer", "reserved"),
        ("question -> json", "reserved"),
        ("question -> answer: int | str", "unions"),
    ],
)
def test_it_rejects_bad_signatures(signature: str, fragment: str) -> None:
    pipeline = {"steps": [{"name": "main", "signature": signature}]}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].signature", fragment)


def test_it_reports_object_signature_errors_at_the_field() -> None:
    signature = {"inputs": {"question": {"type": "strng"}}, "outputs": {"answer": {"desc": 5}}, "extra": 1}
    errors = by_path(validate({"steps": [{"name": "main", "signature": signature}]}, {}))
    assert set(errors) == {
        "pipeline.steps[0].signature.inputs.question.type",
        "pipeline.steps[0].signature.outputs.answer.desc",
        "pipeline.steps[0].signature.extra",
    }


def test_it_rejects_fields_a_module_adds_itself() -> None:
    pipeline = {"steps": [{"name": "main", "module": "ChainOfThought", "signature": "question -> reasoning"}]}
    assert_error(validate(pipeline, {}), "pipeline.steps[0].signature", "added by ChainOfThought itself")


def test_it_requires_every_non_optional_input_to_be_mapped() -> None:
    pipeline = two_steps(inputs={"draft": "$draft.draft"})
    assert_error(validate(pipeline, {}), "pipeline.steps[1].inputs", "input field 'question' is not mapped")


def test_it_allows_optional_inputs_to_stay_unmapped() -> None:
    pipeline = {
        "steps": [
            {
                "name": "main",
                "signature": "question, hint: Optional[str] -> answer",
                "inputs": {"question": "$input.q"},
            }
        ]
    }
    assert validate(pipeline, {}) == []


def test_it_rejects_a_mapping_to_a_field_that_is_not_an_input() -> None:
    pipeline = two_steps(
        inputs={"draft": "$draft.draft", "question": "$input.question", "answer": "$input.x"}
    )
    assert_error(validate(pipeline, {}), "pipeline.steps[1].inputs.answer", "not an input field")


def test_it_checks_literal_inputs_against_the_field_type() -> None:
    pipeline = {
        "steps": [
            {
                "name": "main",
                "signature": "question, n: int -> answer",
                "inputs": {"question": "$input.q", "n": "three"},
            }
        ]
    }
    assert_error(validate(pipeline, {}), "pipeline.steps[0].inputs.n", "expected an integer")


def test_it_rejects_one_input_used_with_two_types() -> None:
    pipeline = {
        "steps": [
            {"name": "first", "signature": "question: str -> answer"},
            {"name": "second", "signature": "question: int -> answer"},
        ]
    }
    assert_error(validate(pipeline, {}), "pipeline.steps[1].inputs", "used as int here but as str")


def test_it_rejects_unknown_adapter() -> None:
    pipeline = {**full_pipeline(), "adapter": "xml"}
    assert_error(validate(pipeline), "pipeline.adapter", "unknown adapter 'xml'")


def test_it_rejects_unknown_lm_settings() -> None:
    pipeline = {**full_pipeline(), "lm": {"model": "sim/default", "api_base": "http://attacker.example"}}
    assert_error(validate(pipeline), "pipeline.lm.api_base", "unknown setting")


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("temperature", 2.5, "above the maximum 2"),
        ("temperature", "hot", "expected a number"),
        ("temperature", True, "expected a number"),
        ("max_tokens", 0, "below the minimum 1"),
        ("max_tokens", 1.5, "expected an integer"),
        ("model", "", "must not be empty"),
        ("model", 4, "expected a string"),
    ],
)
def test_it_rejects_literal_lm_settings_out_of_bounds(setting: str, value: object, fragment: str) -> None:
    pipeline = {"signature": "question -> answer", "lm": {setting: value}}
    assert_error(validate(pipeline, {}), f"pipeline.lm.{setting}", fragment)


def test_it_checks_step_lm_overrides_and_config() -> None:
    pipeline = two_steps(lm={"model": 1}, config={"temperature": -1, "model": "sim/x"})
    errors = by_path(validate(pipeline, {}))
    assert "expected a string" in errors["pipeline.steps[1].lm.model"]
    assert "below the minimum 0" in errors["pipeline.steps[1].config.temperature"]
    assert "unknown setting" in errors["pipeline.steps[1].config.model"]


def test_it_rejects_undeclared_variables() -> None:
    variables = full_variables()
    del variables["k"]
    assert_error(validate(full_pipeline(), variables), "pipeline.steps[0].k", "undeclared variable 'k'")


def test_it_rejects_variables_of_the_wrong_type_for_their_use() -> None:
    variables = full_variables()
    variables["temperature"] = {"type": "str", "default": "hot"}
    variables["k"] = {"type": "float", "default": 3.0}
    errors = by_path(validate(full_pipeline(), variables))
    assert (
        errors["pipeline.lm.temperature"] == "variable 'temperature' is of type str but this needs a number"
    )
    assert errors["pipeline.steps[0].k"] == "variable 'k' is of type float but this needs an integer"


def test_it_rejects_a_variable_whose_default_does_not_fit_where_it_is_used() -> None:
    variables = full_variables()
    variables["temperature"] = {"type": "float", "default": 3.0, "max": 5}
    assert_error(validate(full_pipeline(), variables), "pipeline.lm.temperature", "above the maximum 2")


def test_it_accepts_a_choice_variable_of_numbers_for_a_number_setting() -> None:
    variables = {**full_variables(), "temperature": {"type": "choice", "choices": [0, 0.7], "default": 0}}
    assert validate(full_pipeline(), variables) == []


def test_it_does_not_report_uses_of_a_variable_whose_declaration_is_already_wrong() -> None:
    variables = full_variables()
    variables["k"]["default"] = 99
    assert set(by_path(validate(full_pipeline(), variables))) == {"variables.k.default"}


def test_it_rejects_references_other_than_var_in_settings() -> None:
    pipeline = full_pipeline()
    pipeline["lm"]["temperature"] = "$input.temperature"
    assert_error(validate(pipeline), "pipeline.lm.temperature", "only $var.<name> references")


def test_it_rejects_a_var_for_options_that_shape_the_module() -> None:
    pipeline = {
        "steps": [
            {
                "name": "main",
                "module": "MultiChainComparison",
                "signature": "question -> answer",
                "m": "$var.m",
            }
        ]
    }
    assert_error(
        validate(pipeline, {"m": {"type": "int", "default": 3}}), "pipeline.steps[0].m", "must be a literal"
    )


def test_it_rejects_unknown_tools() -> None:
    pipeline = {
        "steps": [
            {
                "name": "agent",
                "module": "ReAct",
                "signature": "question -> answer",
                "tools": ["calculator", "search"],
            }
        ]
    }
    assert_error(
        validate(pipeline, {}),
        "pipeline.steps[0].tools[1]",
        "unknown tool 'search' (available: calculator, clock)",
    )


@pytest.mark.parametrize(
    ("tools", "path"),
    [
        ([], "tools"),
        ("calculator", "tools"),
        (["finish"], "tools[0]"),
        (["clock", "clock"], "tools[1]"),
        ([3], "tools[0]"),
    ],
)
def test_it_rejects_bad_tool_lists(tools: object, path: str) -> None:
    pipeline = {
        "steps": [{"name": "agent", "module": "ReAct", "signature": "question -> answer", "tools": tools}]
    }
    assert f"pipeline.steps[0].{path}" in by_path(validate(pipeline, {}))


def test_it_rejects_unknown_reward() -> None:
    pipeline = {
        "steps": [
            {"name": "best", "module": "BestOfN", "signature": "question -> answer", "reward": "shortest"}
        ]
    }
    assert_error(validate(pipeline, {}), "pipeline.steps[0].reward", "unknown reward 'shortest'")


def test_it_requires_a_reward_for_best_of_n_and_refine() -> None:
    for module in ("BestOfN", "Refine"):
        pipeline = {"steps": [{"name": "best", "module": module, "signature": "question -> answer"}]}
        assert_error(validate(pipeline, {}), "pipeline.steps[0].reward", f"required for {module} steps")


def test_it_rejects_a_custom_class_outside_the_allowlist() -> None:
    pipeline = {
        "steps": [{"name": "kw", "module": "Custom", "class": "myapp.Thing", "signature": "text -> summary"}]
    }
    assert_error(
        validate(pipeline, {}), "pipeline.steps[0].class", "'myapp.Thing' is not an allowed custom module"
    )


def test_it_rejects_a_signature_on_retrieve_steps() -> None:
    pipeline = {"steps": [{"name": "r", "module": "Retrieve", "corpus": "c", "signature": "q -> passages"}]}
    assert_error(
        validate(pipeline, {}), "pipeline.steps[0].signature", "their signature is query: str -> passages"
    )


def test_it_requires_a_corpus_for_retrieve_steps() -> None:
    assert_error(
        validate({"steps": [{"name": "r", "module": "Retrieve"}]}, {}), "pipeline.steps[0].corpus", "required"
    )


OPTION_STEPS = {
    "k": {"name": "s", "module": "Retrieve", "corpus": "c"},
    "n": {"name": "s", "module": "BestOfN", "signature": "question -> answer", "reward": "nonempty"},
    "max_iters": {"name": "s", "module": "ReAct", "signature": "question -> answer", "tools": ["clock"]},
    "m": {"name": "s", "module": "MultiChainComparison", "signature": "question -> answer"},
}


@pytest.mark.parametrize(("option", "value"), [("k", 0), ("k", 101), ("n", 0), ("max_iters", 100), ("m", 11)])
def test_it_rejects_numeric_step_options_out_of_bounds(option: str, value: int) -> None:
    assert validate({"steps": [OPTION_STEPS[option]]}, {}) == []
    step = {**OPTION_STEPS[option], option: value}
    assert f"pipeline.steps[0].{option}" in by_path(validate({"steps": [step]}, {}))


def test_it_checks_inline_demos_against_the_signature() -> None:
    pipeline = {
        "steps": [
            {
                "name": "main",
                "signature": "question -> answer",
                "demos": [{"question": "q", "answer": "a"}, {"question": "q", "colour": "red"}, "x"],
            }
        ]
    }
    errors = by_path(validate(pipeline, {}))
    assert set(errors) == {"pipeline.steps[0].demos[1].colour", "pipeline.steps[0].demos[2]"}


def test_it_rejects_demos_on_modules_that_do_not_take_them() -> None:
    pipeline = {
        "steps": [
            {
                "name": "agent",
                "module": "ReAct",
                "signature": "question -> answer",
                "tools": ["clock"],
                "demos": [],
            }
        ]
    }
    assert_error(validate(pipeline, {}), "pipeline.steps[0].demos", "not supported by ReAct")


def test_it_rejects_bad_output_mappings() -> None:
    pipeline = two_steps()
    pipeline["outputs"] = {
        "answer": "$final.answr",
        "draft": "$nope.draft",
        "my answer": "$final.answer",
        "_x": "$final.answer",
    }
    errors = by_path(validate(pipeline, {}))
    assert "has no output 'answr'" in errors["pipeline.outputs.answer"]
    assert "unknown step 'nope'" in errors["pipeline.outputs.draft"]
    assert "not a valid field name" in errors["pipeline.outputs['my answer']"]
    assert "not a valid field name" in errors["pipeline.outputs._x"]


@pytest.mark.parametrize("outputs", [{}, [], "answer", None])
def test_it_rejects_outputs_that_are_not_a_mapping(outputs: object) -> None:
    assert_error(validate({**two_steps(), "outputs": outputs}, {}), "pipeline.outputs", "must be an object")


def test_it_returns_every_error_at_once() -> None:
    pipeline = full_pipeline()
    pipeline["adapter"] = "xml"
    pipeline["steps"][0]["module"] = "Retreive"
    pipeline["steps"][1]["inputs"]["question"] = "$var.questions"
    pipeline["outputs"]["answer"] = "$answer.answers"
    variables = full_variables()
    variables["temperature"]["default"] = 3
    errors = by_path(validate(pipeline, variables))
    assert set(errors) == {
        "variables.temperature.default",
        "pipeline.adapter",
        "pipeline.steps[0].module",
        "pipeline.steps[1].inputs.question",
        "pipeline.outputs.answer",
    }
