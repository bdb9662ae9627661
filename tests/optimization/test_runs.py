"""Optimization runs in-process on the simulated provider: they improve the demo program."""

import dspy

from llm.sim import sim_lm
from optimization import runner
from optimization.models import OptimizationRun
from programs.spec import compile_program
from tests.factories import OptimizationRunFactory

SPLIT = {"seed": 0, "dev_fraction": 0.5}


def optimize(api, program, dataset, optimizer, config=None, metric="exact_match", **extra):
    body = {
        "optimizer": optimizer,
        "dataset": str(dataset.id),
        "metric": metric,
        "config": config or {},
        "split": SPLIT,
        **extra,
    }
    response = api.post(f"/api/v1/programs/{program.id}/optimize/", body, format="json")
    assert response.status_code == 202, response.json()
    run = runner.run_optimization(response.json()["id"])
    assert run is not None
    return run


def test_bootstrap_few_shot_raises_the_dev_score(api, classifier, tickets, settings):
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    run = optimize(
        api, classifier, tickets, "BootstrapFewShot", {"max_bootstrapped_demos": 4, "max_labeled_demos": 4}
    )
    assert run.status == "succeeded", run.error
    metrics = run.result.performance_metrics
    print("BootstrapFewShot", metrics["baseline_score"], "->", metrics["optimized_score"])
    assert metrics["optimized_score"] >= metrics["baseline_score"] + 0.05
    assert metrics["dev_size"] == 40 and metrics["lm_calls"] > 0
    assert run.progress["phase"] == "done" and run.progress["trials_done"] > 0
    assert len(run.result.training_data_hash) == 64
    classifier.refresh_from_db()
    assert classifier.optimization_history[-1]["optimized_score"] == metrics["optimized_score"]


def test_stored_parameters_reproduce_the_optimized_predictions_in_plain_dspy(api, classifier, tickets):
    run = optimize(
        api, classifier, tickets, "BootstrapFewShot", {"max_bootstrapped_demos": 4, "max_labeled_demos": 4}
    )
    state = run.result.parameters

    class PlainClassifier(dspy.Module):
        def __init__(self):
            super().__init__()
            self.classify = dspy.ChainOfThought(
                dspy.Signature(
                    "ticket: str -> category: Literal['billing', 'bug', 'feature_request', 'account']",
                    "Classify the support ticket into one category.",
                )
            )

        def forward(self, ticket):
            return self.classify(ticket=ticket)

    plain = PlainClassifier()
    plain.load_state(state)
    ours = compile_program(classifier.pipeline, classifier.variables).load_state(state)
    lm = sim_lm("sim/default", cache=False)
    tickets_text = [e.input["ticket"] for e in tickets.examples.all()[:15]]
    with dspy.context(lm=lm):
        plain_answers = [plain(ticket=t).category for t in tickets_text]
        fresh_answers = [PlainClassifier()(ticket=t).category for t in tickets_text]
    ours_answers = [ours.run({"ticket": t}, None, lambda config: lm)["category"] for t in tickets_text]
    assert plain_answers == ours_answers
    assert plain_answers != fresh_answers  # the demos really change what the model answers


def test_variable_search_finds_better_settings_and_records_each_combination(api, context_qa, qa):
    run = optimize(api, context_qa, qa, "VariableSearch", {"steps": 2}, metric="normalized_exact_match")
    assert run.status == "succeeded", run.error
    result = run.result
    metrics = result.performance_metrics
    print("VariableSearch", metrics["baseline_score"], "->", metrics["optimized_score"], result.variables)
    assert metrics["optimized_score"] >= metrics["baseline_score"] + 0.5
    assert result.variables["model"] == "sim/concise"
    assert len(metrics["combinations"]) == 4  # 2 models x temperatures {0, 1}
    assert all(
        {"variables", "score", "lm_calls", "cost_usd", "tokens"} <= set(c) for c in metrics["combinations"]
    )
    assert run.progress["trials_done"] == run.progress["trials_total"] == 4


def test_apply_true_applies_only_a_result_that_beats_the_baseline(api, context_qa, qa):
    better = optimize(
        api, context_qa, qa, "VariableSearch", {"steps": 2}, apply=True, metric="normalized_exact_match"
    )
    context_qa.refresh_from_db()
    assert context_qa.active_result_id == better.result_id and better.message.startswith("Applied")
    # Starting from the applied result, the search finds nothing better: stored, not applied.
    same = optimize(
        api, context_qa, qa, "VariableSearch", {"steps": 2}, apply=True, metric="normalized_exact_match"
    )
    assert same.status == "succeeded" and "Not applied" in same.message
    assert (
        same.result.performance_metrics["baseline_score"]
        == better.result.performance_metrics["optimized_score"]
    )
    context_qa.refresh_from_db()
    assert context_qa.active_result_id == better.result_id
    assert len(context_qa.optimization_history) == 2


def test_the_run_api_shows_progress_and_the_result(api, classifier, tickets):
    run = optimize(api, classifier, tickets, "LabeledFewShot", {"k": 4})
    body = api.get(f"/api/v1/optimizations/{run.id}/").json()
    assert body["status"] == "succeeded" and body["result"] == str(run.result_id)
    assert {"phase", "trials_done", "trials_total", "best_score", "lm_calls", "cost_usd"} <= set(
        body["progress"]
    )


def test_the_optimize_command_shows_a_progress_bar(classifier, tickets, capsys, transactional_db):
    from django.core.management import call_command

    call_command(
        "dspex_optimize",
        classifier.name,
        "--optimizer",
        "LabeledFewShot",
        "--dataset",
        "tickets",
        "--config",
        '{"k": 4}',
        "--inline",
        "--wait",
    )
    out = capsys.readouterr().out
    assert "[" in out and "] 1/1" in out and "succeeded: baseline=" in out


def test_a_program_reads_optimizing_while_a_run_runs_then_active(api, classifier, tickets, monkeypatch):
    seen = []
    prepare = runner.Optimization.prepare

    def observed(self):
        seen.append(type(classifier).objects.get(id=classifier.id).status)
        prepare(self)

    monkeypatch.setattr(runner.Optimization, "prepare", observed)
    run = optimize(api, classifier, tickets, "LabeledFewShot", {"k": 2})
    assert run.status == "succeeded"
    assert seen == ["optimizing"]
    assert api.get(f"/api/v1/programs/{classifier.id}/").json()["status"] == "active"
    # Executions still run while a program is being optimized.
    classifier.status = "optimizing"
    classifier.save(update_fields=["status"])
    body = {"input": {"ticket": "My invoice is wrong"}, "wait": True}
    assert api.post(f"/api/v1/programs/{classifier.id}/execute/", body, format="json").status_code == 200


def test_a_failed_run_and_a_cancelled_run_put_the_program_back(api, classifier, tickets):
    run = running_run(classifier, tickets)
    classifier.refresh_from_db()
    assert classifier.status == "optimizing"
    # The worker died and the reaper released the run for another attempt: still in progress.
    OptimizationRun.objects.filter(id=run.id).update(status="pending")
    OptimizationRun.sync_program_status(classifier.id)
    classifier.refresh_from_db()
    assert classifier.status == "optimizing"
    assert api.post(f"/api/v1/optimizations/{run.id}/cancel/").status_code == 200
    classifier.refresh_from_db()
    assert classifier.status == "active"


def test_drafts_stay_drafts_and_nobody_sets_optimizing_by_hand(api, classifier, tickets):
    classifier.status = "draft"
    classifier.save(update_fields=["status"])
    running_run(classifier, tickets)
    classifier.refresh_from_db()
    assert classifier.status == "draft"
    response = api.patch(f"/api/v1/programs/{classifier.id}/", {"status": "optimizing"}, format="json")
    assert response.status_code == 400
    assert [e["path"] for e in response.json()["errors"]] == ["status"]
    assert "set by the service" in response.json()["errors"][0]["message"]
    classifier.refresh_from_db()
    assert classifier.status == "draft"
    created = api.post(
        "/api/v1/programs/",
        {"name": "born-optimizing", "pipeline": {"signature": "q -> a"}, "status": "optimizing"},
        format="json",
    )
    assert created.status_code == 400 and created.json()["errors"][0]["path"] == "status"


def running_run(program, dataset) -> OptimizationRun:
    """A run as a worker holds it (claimed, first attempt), with the program's status synced."""
    run = OptimizationRunFactory(
        program=program,
        dataset=dataset,
        optimizer="LabeledFewShot",
        metric="exact_match",
        status="running",
        attempts=1,
    )
    OptimizationRun.sync_program_status(program.id)
    return run
