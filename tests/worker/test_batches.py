"""Batches: many inputs, one execution each, bounded concurrency, JSONL results in input order."""

import io
import json

import pytest
from django.core.management import call_command

from executions.models import Batch, CognitiveExecution
from tests.factories import OptimizationResultFactory, ProgramCachePolicyFactory
from tests.support import sim_env, start_worker, wait_for

pytestmark = pytest.mark.broker


def create(api, program, **body):
    return api.post("/api/v1/batches/", {"program": str(program.id), **body}, format="json")


def results(api, batch_id: str) -> list[dict]:
    response = api.get(f"/api/v1/batches/{batch_id}/results/")
    assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


@pytest.mark.django_db
def test_it_rejects_bad_inputs_with_their_index(api, make_program):
    response = create(api, make_program(), inputs=[{"question": "fine"}, {"query": "wrong field"}])
    assert response.status_code == 400
    paths = {e["path"] for e in response.json()["errors"]}
    assert paths == {"inputs[1].question", "inputs[1].query"}
    assert not Batch.objects.exists() and not CognitiveExecution.objects.exists()


@pytest.mark.django_db
def test_it_refuses_more_inputs_than_the_limit(api, make_program, settings):
    settings.DSPEX_BATCH_MAX_INPUTS = 3
    response = create(api, make_program(), inputs=[{"question": str(i)} for i in range(4)])
    assert response.status_code == 400 and response.json()["code"] == "batch_too_large"


@pytest.mark.django_db
def test_it_accepts_a_jsonl_upload(api, make_program, django_capture_on_commit_callbacks):
    program = make_program()
    upload = io.BytesIO(b'{"question": "one"}\n\n{"question": "two"}\n')
    upload.name = "inputs.jsonl"
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(
            "/api/v1/batches/",
            {"program": str(program.id), "file": upload, "concurrency": 1},
            format="multipart",
        )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert body["total"] == 2 and body["counts"]["pending"] == 2 and body["progress"] == 0
    items = CognitiveExecution.objects.filter(batch_id=body["id"]).order_by("batch_index")
    assert [(e.batch_index, e.input) for e in items] == [(0, {"question": "one"}), (1, {"question": "two"})]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_batch_runs_with_bounded_concurrency_and_streams_results_in_order(
    api, make_program, transactional_db, simlm
):
    simlm.reset()
    simlm.configure(latency_ms=200)
    worker = start_worker(queues="llm_calls,priority", concurrency=8, env=sim_env(simlm))
    try:
        program = make_program()
        questions = [f"question number {i}?" for i in range(24)]
        response = create(api, program, inputs=[{"question": q} for q in questions], concurrency=3)
        assert response.status_code == 202, response.json()
        batch_id = response.json()["id"]
        in_flight_seen = []

        def done() -> bool:
            body = api.get(f"/api/v1/batches/{batch_id}/").json()
            in_flight_seen.append(body["counts"]["running"])
            return body["status"] == "finished"

        wait_for(done, 90, "the batch to finish", interval=0.1)
    finally:
        worker.stop()
        simlm.reset()
    body = api.get(f"/api/v1/batches/{batch_id}/").json()
    assert body["counts"]["succeeded"] == 24 and body["progress"] == 1.0
    assert max(in_flight_seen) <= 3 and max(in_flight_seen) >= 2
    lines = results(api, batch_id)
    assert [line["input"]["question"] for line in lines] == questions
    assert all(line["status"] == "succeeded" and line["output"]["answer"] for line in lines)
    assert set(lines[0]) >= {"input", "output", "status", "error"}


@pytest.mark.e2e
@pytest.mark.slow
def test_a_cancelled_batch_stops_running_its_items(api, make_program, transactional_db, simlm):
    simlm.reset()
    simlm.configure(latency_ms=300)
    worker = start_worker(queues="llm_calls,priority", env=sim_env(simlm))
    try:
        program = make_program()
        response = create(api, program, inputs=[{"question": f"q{i}"} for i in range(30)], concurrency=1)
        batch_id = response.json()["id"]
        items = CognitiveExecution.objects.filter(batch_id=batch_id)
        wait_for(lambda: items.filter(status="succeeded").count() >= 2, 60, "two items to finish")
        cancelled = api.post(f"/api/v1/batches/{batch_id}/cancel/").json()
        assert cancelled["status"] == "cancelled"
        settled = items.filter(status__in=["succeeded", "cancelled"]).count
        wait_for(lambda: settled() == 30, 30, "every item to be settled")
        succeeded_at_cancel = items.filter(status="succeeded").count()
        # Nothing new starts after the cancellation: a second look shows the same counts.
        wait_for(lambda: not items.filter(status__in=["pending", "running"]).exists(), 10, "no live items")
    finally:
        worker.stop()
        simlm.reset()
    assert items.filter(status="succeeded").count() == succeeded_at_cancel
    assert 2 <= succeeded_at_cancel < 30
    body = api.get(f"/api/v1/batches/{batch_id}/").json()
    assert body["counts"]["cancelled"] == 30 - succeeded_at_cancel


@pytest.mark.django_db(transaction=True)
def test_dspex_batch_command_writes_results_in_input_order(make_program, tmp_path):
    make_program(name="shell-qa")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"question": f"what is {i} + {i}?"}) + "\n" for i in range(12)))
    output = tmp_path / "results.jsonl"
    err = io.StringIO()
    call_command("dspex_batch", "shell-qa", str(inputs), "-o", str(output), "--in-process", stderr=err)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["input"]["question"] for line in lines] == [f"what is {i} + {i}?" for i in range(12)]
    assert all(line["status"] == "succeeded" for line in lines)
    assert "12/12" in err.getvalue()  # the progress bar reached the end


@pytest.mark.django_db
def test_batch_items_get_what_a_single_execute_gets(api, make_program, settings):
    """Applied variable-search values, the program's cache policy and its spend limit apply to a
    batch exactly as to `execute`."""
    from llm import budgets

    variables = {"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 1}}
    program = make_program(
        pipeline={"lm": {"model": "sim/default", "temperature": "$var.temperature"}, "signature": "q -> a"},
        variables=variables,
    )
    program.active_result = OptimizationResultFactory(
        program=program,
        optimizer_type="VariableSearch",
        parameters={},
        variables={"temperature": 0.7},
    )
    program.save()
    ProgramCachePolicyFactory(program=program, llm_cache=False)
    response = create(api, program, inputs=[{"q": "one"}, {"q": "two"}], cache=True)
    assert response.status_code == 202, response.json()
    items = CognitiveExecution.objects.filter(batch_id=response.json()["id"])
    single = api.post(f"/api/v1/programs/{program.id}/execute/", {"input": {"q": "solo"}}, format="json")
    expected = CognitiveExecution.objects.values("variables", "use_cache").get(id=single.json()["id"])
    assert expected == {"variables": {"temperature": 0.7}, "use_cache": False}
    assert list(items.values("variables", "use_cache")) == [expected, expected]

    settings.DSPEX_BUDGETS = {"programs": {str(program.id): {"daily": 0.0}}}
    budgets.invalidate()
    refused = create(api, program, inputs=[{"q": "over budget"}])
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exceeded")
    assert CognitiveExecution.objects.filter(program=program).count() == 3  # nothing written
