"""The execution answer cache (executions.answers): an identical request to the same release is
answered from the kept run, stored with its full trace, without DSPy or the provider."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from caching import operations
from executions import answers, runner
from executions.models import CognitiveExecution
from programs.spec import compile_program

pytestmark = pytest.mark.django_db

QA = {"signature": "question -> answer"}


def execute(api, program, question="What is 2 + 3?", **body):
    body = {"input": {"question": question}, "wait": True, **body}
    response = api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")
    assert response.status_code == 200, response.json()
    return response.json()


def lm_entries(body):
    return [entry for entry in body["trace"] if entry["kind"] == "lm"]


def test_the_third_identical_request_is_answered_from_the_kept_run(
    api, make_program, http_provider, settings
):
    settings.DSPEX_LOCAL_CACHE_S = 600  # token and program stay warm, however slow the machine
    program = make_program(pipeline=QA)
    first = execute(api, program)  # the provider answers; the LLM cache stores it
    second = execute(api, program)  # every LM call a cache hit: this run's answer is kept
    assert [e["cache_hit"] for e in lm_entries(first)] == [False]
    assert [e["cache_hit"] for e in lm_entries(second)] == [True]
    assert "answer_cache_hit" not in second["metrics"]
    requests = http_provider.requests()
    with CaptureQueriesContext(connection) as queries:
        third = execute(api, program)
    assert http_provider.requests() == requests  # no provider request
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]  # stored finished at once
    assert third["output"] == second["output"] == first["output"]
    assert third["trace"] == second["trace"]  # the kept run's full trace, LM calls marked cache hits
    assert third["metrics"] == {**second["metrics"], "answer_cache_hit": True}
    assert third["metrics"]["cost_usd"] == 0 and third["id"] not in (first["id"], second["id"])
    row = CognitiveExecution.objects.get(id=third["id"])
    assert (row.status, row.attempts, row.trace, row.output) == (
        "succeeded",
        1,
        second["trace"],
        first["output"],
    )
    assert row.started_at <= row.finished_at and row.duration_ms is not None


def test_a_different_input_variables_version_or_cache_off_runs_the_program(api, make_program, http_provider):
    program = make_program(
        pipeline={**QA, "instructions": "{{ tone }}"},
        variables={"tone": {"type": "str", "default": "Plain."}},
    )
    for _ in range(2):
        execute(api, program)
    assert execute(api, program)["metrics"].get("answer_cache_hit") is True
    assert "answer_cache_hit" not in execute(api, program, "Another question?")["metrics"]
    assert "answer_cache_hit" not in execute(api, program, variables={"tone": "Terse."})["metrics"]
    assert "answer_cache_hit" not in execute(api, program, cache=False)["metrics"]
    program.pipeline = {**QA, "instructions": "{{ tone }} Answer briefly."}
    program.save()
    body = execute(api, program)
    assert body["program_version"] == 2 and "answer_cache_hit" not in body["metrics"]


def test_a_routing_change_or_a_purge_of_the_llm_cache_forgets_the_answers(
    api, make_program, http_provider, settings
):
    program = make_program(pipeline=QA)
    for _ in range(2):
        execute(api, program)
    assert execute(api, program)["metrics"].get("answer_cache_hit") is True
    settings.DSPEX_MODEL_FALLBACKS = {"openai/sim-default": ["openai/sim-other"]}
    assert "answer_cache_hit" not in execute(api, program)["metrics"]
    assert execute(api, program)["metrics"].get("answer_cache_hit") is True  # kept again, new routing
    operations.purge("llm", channel="api")
    requests = http_provider.requests()
    assert "answer_cache_hit" not in execute(api, program)["metrics"]
    assert http_provider.requests() == requests + 1  # the purge emptied both: the provider answered


def test_a_queued_execution_is_answered_on_the_worker_too(api, make_program, http_provider):
    program = make_program(pipeline=QA)
    for _ in range(2):
        execute(api, program)
    execution = runner.create_execution(program, {"question": "What is 2 + 3?"})
    requests = http_provider.requests()
    outcome = runner.run_execution(execution.id)
    assert http_provider.requests() == requests
    row = outcome.execution
    assert row.status == "succeeded" and row.metrics.get("answer_cache_hit") is True and row.trace


def test_a_run_with_a_provider_call_or_a_failure_is_never_kept(api, make_program, http_provider):
    program = make_program(pipeline=QA)
    execute(api, program)
    key = runner.answer_key(CognitiveExecution.objects.latest("created_at"))
    assert key is not None and answers.lookup(key) is None  # the first run called the provider
    answers.keep(key, {"answer": "x"}, [{"kind": "lm", "cache_hit": True, "error": "boom"}], {})
    answers.keep(key, {"answer": "x"}, [{"kind": "module"}], {})
    assert answers.lookup(key) is None


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        (QA, True),
        ({"signature": "question -> answer", "module": "ChainOfThought"}, True),
        (
            {
                "steps": [
                    {
                        "name": "draft",
                        "signature": "question -> draft",
                        "inputs": {"question": "$input.question"},
                    },
                    {"name": "final", "signature": "draft -> answer", "inputs": {"draft": "$draft.draft"}},
                ]
            },
            True,
        ),
        ({"signature": "question -> answer", "module": "ReAct", "tools": ["calculator"]}, False),
        (
            {
                "steps": [
                    {
                        "name": "retrieve",
                        "module": "Retrieve",
                        "corpus": "handbook",
                        "k": 2,
                        "inputs": {"query": "$input.question"},
                    },
                    {
                        "name": "answer",
                        "signature": "context: list[str], question: str -> answer: str",
                        "inputs": {"context": "$retrieve.passages", "question": "$input.question"},
                    },
                ]
            },
            False,
        ),
    ],
    ids=["predict", "chain-of-thought", "two-steps", "react-with-tools", "retrieve"],
)
def test_only_pure_predict_and_chain_of_thought_programs_are_answerable(pipeline, expected):
    assert answers.answerable(compile_program(pipeline, {}).plan) is expected
