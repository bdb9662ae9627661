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
