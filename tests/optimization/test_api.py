"""Datasets, optimize requests, results, rollback, cancel and schedules through the API."""

import json

import pytest
from django_celery_beat.models import PeriodicTask

from optimization import runner, schedules
from optimization.models import Dataset, OptimizationRun

ROWS = [
    {"input": {"question": "What is 2 + 2?"}, "output": {"answer": "4"}},
    {"input": {"question": "What is 3 + 3?"}, "output": {"answer": "6"}},
    {"input": {"question": "What is 5 + 1?"}, "output": {"answer": "6"}},
]


def make_dataset(api, name="math", rows=ROWS):
    response = api.post("/api/v1/datasets/", {"name": name, "examples": rows}, format="json")
    assert response.status_code == 201, response.json()
    return Dataset.objects.get(id=response.json()["id"])


def test_it_creates_a_dataset_with_examples_and_lists_it(api):
    dataset = make_dataset(api)
    listed = api.get("/api/v1/datasets/").json()["results"]
    assert [(d["name"], d["example_count"]) for d in listed] == [("math", 3)]
    assert dataset.examples.count() == 3


def test_a_jsonl_import_with_bad_rows_reports_each_and_imports_nothing(api):
    dataset = make_dataset(api, rows=[])
    content = "\n".join(
        [json.dumps(ROWS[0]), "{not json", json.dumps({"input": {"q": "x"}}), json.dumps(ROWS[1])]
    )
    response = api.post(f"/api/v1/datasets/{dataset.id}/import/", {"content": content}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_dataset"
    assert [e["path"] for e in body["errors"]] == ["rows[2]", "rows[3].output"]
    assert dataset.examples.count() == 0


def test_it_imports_csv_with_output_columns(api):
    dataset = make_dataset(api, rows=[])
    content = 'question,context,output.answer\nWho?,"[""Ann did it.""]",Ann\nWhen?,"[""In 2020.""]",2020\n'
    response = api.post(
        f"/api/v1/datasets/{dataset.id}/import/", {"content": content, "format": "csv"}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["imported"] == 2
    first = dataset.examples.order_by("position").first()
    assert first.input == {"question": "Who?", "context": ["Ann did it."]} and first.output == {
        "answer": "Ann"
    }


def test_the_import_command_imports_a_file(tmp_path, db, capsys):
    from django.core.management import call_command

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    call_command("dspex_import_dataset", "from-file", str(path))
    assert Dataset.objects.get(name="from-file").examples.count() == 3


def optimize_body(dataset, **extra):
    return {"optimizer": "LabeledFewShot", "dataset": str(dataset.id), "metric": "exact_match", **extra}


def test_an_unknown_metric_is_a_400(api, make_program):
    program, dataset = make_program(), make_dataset(api)
    response = api.post(
        f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset, metric="vibes"), format="json"
    )
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_metric"


@pytest.mark.parametrize(
    ("optimizer", "config", "path"),
    [
        ("BootstrapFewShot", {"max_bootstraped_demos": 2}, "config.max_bootstraped_demos"),
        ("BootstrapFewShot", {"max_bootstrapped_demos": -1}, "config.max_bootstrapped_demos"),
        ("GEPA", {}, "config"),
        ("SIMBA", {"bsize": 50}, "config.bsize"),
        ("VariableSearch", {}, "optimizer"),
        ("MIPROv2", {"auto": "none"}, "config.num_candidates"),
    ],
)
def test_optimizer_configs_are_validated_with_paths(api, make_program, optimizer, config, path):
    program, dataset = make_program(), make_dataset(api)
    body = optimize_body(dataset, optimizer=optimizer, config=config)
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", body, format="json")
    assert response.status_code == 400, response.json()
    assert path in [e["path"] for e in response.json()["errors"]]


def test_examples_are_checked_against_the_program_signature(api, make_program):
    program = make_program(pipeline={"signature": "ticket -> category"})
    dataset = make_dataset(api)
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json")
    assert response.status_code == 400
    paths = [e["path"] for e in response.json()["errors"]]
    assert "dataset.examples[1].input.ticket" in paths and "dataset.examples[1].output.answer" in paths


def test_apply_rollback_and_history(api, make_program):
    program, dataset = make_program(), make_dataset(api)
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    first = runner.run_optimization(response.json()["id"]).result
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json")
    second = runner.run_optimization(response.json()["id"]).result
    detail = api.get(f"/api/v1/optimization-results/{second.id}/").json()
    assert {"baseline_score", "optimized_score", "dev_size", "lm_calls", "cost_usd", "duration_s"} <= set(
        detail["performance_metrics"]
    )
    assert api.post(f"/api/v1/optimization-results/{second.id}/apply/").status_code == 200
    program.refresh_from_db()
    assert program.active_result_id == second.id
    assert [h["result"] for h in program.optimization_history] == [str(first.id), str(second.id)]
    api.post(f"/api/v1/programs/{program.id}/rollback/", {"result": str(first.id)}, format="json")
    program.refresh_from_db()
    assert program.active_result_id == first.id
    api.post(f"/api/v1/programs/{program.id}/rollback/", {"result": None}, format="json")
    program.refresh_from_db()
    assert program.active_result_id is None


def test_cancelling_a_pending_run_means_it_never_runs(api, make_program):
    program, dataset = make_program(), make_dataset(api)
    run_id = api.post(
        f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json"
    ).json()["id"]
    assert api.post(f"/api/v1/optimizations/{run_id}/cancel/").json()["status"] == "cancelled"
    assert runner.run_optimization(run_id) is None
    assert api.post(f"/api/v1/optimizations/{run_id}/cancel/").status_code == 409


def test_a_schedule_creates_a_beat_task_and_skips_unchanged_inputs(api, make_program):
    program, dataset = make_program(), make_dataset(api)
    body = {"name": "nightly", "program": str(program.id), **optimize_body(dataset), "cron": "0 3 * * *"}
    response = api.post("/api/v1/schedules/", body, format="json")
    assert response.status_code == 201, response.json()
    schedule_id = response.json()["id"]
    task = PeriodicTask.objects.get(name=f"optimization:{schedule_id}")
    assert task.task == "optimization.scheduled" and task.crontab.hour == "3"
    first = schedules.start_scheduled_run(schedule_id)
    assert first.status == "pending"
    runner.run_optimization(first.id)
    second = schedules.start_scheduled_run(schedule_id)
    assert second.status == OptimizationRun.Status.SKIPPED
    assert "unchanged" in second.message
    api.post(
        f"/api/v1/datasets/{dataset.id}/import/",
        {"content": json.dumps({"input": {"question": "What is 9 + 1?"}, "output": {"answer": "10"}})},
        format="json",
    )
    assert schedules.start_scheduled_run(schedule_id).status == "pending"


def test_viewers_read_runs_but_cannot_start_apply_or_import(api, make_program, actors):
    program, dataset = make_program(), make_dataset(api)
    run_id = api.post(
        f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json"
    ).json()["id"]
    result = runner.run_optimization(run_id).result
    viewer = actors["viewer"].client
    assert viewer.get(f"/api/v1/optimizations/{run_id}/").status_code == 200
    assert (
        viewer.post(
            f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json"
        ).status_code
        == 403
    )
    assert viewer.post(f"/api/v1/optimization-results/{result.id}/apply/").status_code == 403
    assert (
        viewer.post(f"/api/v1/datasets/{dataset.id}/import/", {"content": "{}"}, format="json").status_code
        == 403
    )
    operator = actors["operator"].client
    assert operator.post(f"/api/v1/optimization-results/{result.id}/apply/").status_code == 200
    outsider = actors["outsider"].client
    assert outsider.get(f"/api/v1/optimizations/{run_id}/").status_code == 403


def test_a_result_that_no_longer_fits_the_program_is_refused(api, make_program):
    program, dataset = make_program(), make_dataset(api)
    run_id = api.post(
        f"/api/v1/programs/{program.id}/optimize/", optimize_body(dataset), format="json"
    ).json()["id"]
    result = runner.run_optimization(run_id).result
    program.pipeline = {
        "steps": [
            {
                "name": "reply",
                "module": "Predict",
                "signature": "question -> answer",
                "inputs": {"question": "$input.question"},
            }
        ]
    }
    program.save()
    response = api.post(f"/api/v1/optimization-results/{result.id}/apply/")
    assert response.status_code == 409 and response.json()["code"] == "result_incompatible"
    program.refresh_from_db()
    assert program.active_result_id is None
