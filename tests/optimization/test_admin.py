"""The operator console: run progress columns, applying a result and rolling back from the admin."""

from optimization import runner
from optimization.models import OptimizationResult


def test_admin_lists_runs_with_progress_and_applies_results(api, client, operator, make_program, tickets):
    program = make_program(
        pipeline={"signature": "ticket -> category"},
    )
    body = {"optimizer": "LabeledFewShot", "dataset": str(tickets.id), "metric": "exact_match"}
    run_id = api.post(f"/api/v1/programs/{program.id}/optimize/", body, format="json").json()["id"]
    result = runner.run_optimization(run_id).result
    client.force_login(operator)
    page = client.get("/admin/optimization/optimizationrun/")
    assert page.status_code == 200 and b"1 / 1" in page.content
    assert client.get(f"/admin/optimization/optimizationrun/{run_id}/change/").status_code == 200
    assert client.get("/admin/optimization/dataset/").status_code == 200
    changelist = "/admin/optimization/optimizationresult/"
    client.post(changelist, {"action": "apply_result", "_selected_action": [str(result.id)]})
    program.refresh_from_db()
    assert program.active_result_id == result.id
    client.post(changelist, {"action": "clear_active_result", "_selected_action": [str(result.id)]})
    program.refresh_from_db()
    assert program.active_result_id is None
    assert OptimizationResult.objects.count() == 1


def test_the_schedule_form_edits_the_loop_with_the_api_s_checks(client, operator, make_program):
    import json

    from django_celery_beat.models import PeriodicTask

    from optimization.models import OptimizationSchedule

    program = make_program(pipeline={"signature": "ticket -> category"})
    client.force_login(operator)
    form = {
        "name": "console-loop",
        "program": str(program.id),
        "dataset": "",
        "from_executions": json.dumps({"window_s": 86400, "use_corrected_output": True}),
        "optimizer": "LabeledFewShot",
        "metric": json.dumps("exact_match"),
        "config": "{}",
        "split": "{}",
        "canary": json.dumps({"percent": 150}),
        "cron": "0 3 * * *",
        "interval_s": "",
        "enabled": "on",
    }
    url = "/admin/optimization/optimizationschedule/add/"
    refused = client.post(url, form)
    assert refused.status_code == 200  # the form again, with the error on its field
    assert "canary.percent: must be a number with 0 &lt; percent &lt; 100" in refused.content.decode()
    assert not OptimizationSchedule.objects.exists()

    saved = client.post(url, {**form, "canary": json.dumps({"percent": 10, "sticky_by": "user"})})
    assert saved.status_code == 302, saved.content.decode()[:3000]
    schedule = OptimizationSchedule.objects.get(name="console-loop")
    assert schedule.dataset is None and schedule.from_executions["use_corrected_output"] is True
    assert schedule.canary["promote_when"] is None and schedule.canary["sticky_by"] == "user"
    assert PeriodicTask.objects.filter(name=f"optimization:{schedule.id}", enabled=True).exists()
    page = client.get(f"/admin/optimization/optimizationschedule/{schedule.id}/change/").content.decode()
    assert "Last message" in page
