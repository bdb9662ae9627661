"""The Run page: a form from the program's inputs and variables; runs through the runner, shows the result."""

import pytest
from django.urls import reverse

from executions.models import CognitiveExecution
from monitoring.models import AuditEvent

pytestmark = pytest.mark.django_db

VARIABLES = {
    "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2},
    "model": {"type": "choice", "choices": ["sim/default", "sim/concise"], "default": "sim/default"},
}
PIPELINE = {
    "lm": {"model": "$var.model", "temperature": "$var.temperature"},
    "signature": "question -> answer",
}


@pytest.fixture
def priced_sim(settings):
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, "sim": {"prompt": 1.0, "completion": 2.0}}


def run_url(program: object) -> str:
    return reverse("admin:programs_run", args=[program.pk])


def test_the_form_has_a_field_per_input_and_variable(operator_client, make_program):
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    page = operator_client.get(run_url(program)).content.decode()
    assert 'name="input__question"' in page
    assert 'name="var__temperature"' in page and 'value="0.0"' in page
    assert 'name="var__model"' in page and "sim/concise" in page


def test_it_runs_the_program_and_shows_output_trace_and_cost(
    operator_client, console_operator, make_program, priced_sim
):
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    response = operator_client.post(
        run_url(program),
        {
            "input__question": "What is the capital of France?",
            "var__temperature": "0.5",
            "var__model": "1",
            "use_cache": "on",
        },
    )
    assert response.status_code == 200
    execution = CognitiveExecution.objects.get()
    assert execution.status == "succeeded", execution.error
    assert execution.variables == {"temperature": 0.5, "model": "sim/concise"}
    assert execution.created_by == console_operator
    page = response.content.decode()
    assert 'id="run-output"' in page and execution.output["answer"] in page
    assert "LM call" in page and "[[ ## question ## ]]" in page
    cost = execution.metrics["cost_usd"]
    assert cost > 0 and f"${cost:.6f}" in page
    assert reverse("admin:executions_cognitiveexecution_change", args=[execution.pk]) in page
    event = AuditEvent.objects.get(action="run")
    assert event.channel == "admin" and event.changes["execution"] == str(execution.pk)


def test_bad_inputs_are_shown_on_their_fields_and_nothing_runs(operator_client, make_program):
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    response = operator_client.post(run_url(program), {"input__question": "hi", "var__temperature": "7"})
    assert response.status_code == 200
    assert "less than or equal to 2" in response.content.decode()
    assert not CognitiveExecution.objects.exists()


def test_a_typed_json_input_is_checked_against_its_type(operator_client, make_program):
    pipeline = {"signature": "context: list[str], question: str -> answer: str"}
    program = make_program("ctx", pipeline=pipeline)
    response = operator_client.post(
        run_url(program), {"input__context": '"not a list"', "input__question": "q"}
    )
    page = response.content.decode()
    assert "input.context" in page
    assert not CognitiveExecution.objects.exists()


def test_viewers_cannot_run(viewer_client, make_program):
    program = make_program("qa")
    assert viewer_client.get(run_url(program)).status_code == 403
    assert viewer_client.post(run_url(program), {"input__question": "hi"}).status_code == 403
    assert not CognitiveExecution.objects.exists()


def test_an_archived_program_is_not_run(operator_client, make_program):
    program = make_program("qa", status="archived")
    response = operator_client.post(run_url(program), {"input__question": "hi"}, follow=True)
    assert "archived" in response.content.decode()
    assert not CognitiveExecution.objects.exists()


def test_run_again_prefills_the_form_from_an_earlier_execution(operator_client, make_program):
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    operator_client.post(
        run_url(program),
        {"input__question": "Earlier question?", "var__temperature": "1.5", "var__model": "1"},
    )
    execution = CognitiveExecution.objects.get()
    detail = operator_client.get(reverse("admin:executions_cognitiveexecution_change", args=[execution.pk]))
    rerun = f"{run_url(program)}?from={execution.pk}"
    assert rerun in detail.content.decode()
    page = operator_client.get(rerun).content.decode()
    assert "Earlier question?</textarea>" in page
    assert 'value="1.5"' in page and '<option value="1" selected>' in page
    assert operator_client.get(run_url(program) + "?from=not-a-uuid").status_code == 200
