"""Every supported DSPy optimizer runs end to end on a small slice of the demo data (in-process sim)."""

import pytest

from optimization import runner

SMALL = {"seed": 0, "dev_fraction": 0.5, "max_train": 8, "max_dev": 6}
CONFIGS = {
    "LabeledFewShot": {"k": 4},
    "BootstrapFewShotWithRandomSearch": {
        "max_bootstrapped_demos": 2,
        "max_labeled_demos": 2,
        "num_candidate_programs": 2,
    },
    "MIPROv2": {
        "auto": "none",
        "num_candidates": 2,
        "num_trials": 2,
        "max_bootstrapped_demos": 1,
        "max_labeled_demos": 1,
        "minibatch": False,
    },
    "COPRO": {"breadth": 2, "depth": 1},
    "GEPA": {"max_metric_calls": 30, "reflection_minibatch_size": 2},
    "SIMBA": {"bsize": 4, "num_candidates": 2, "max_steps": 1, "max_demos": 1},
}


@pytest.mark.parametrize("optimizer", sorted(CONFIGS))
def test_each_optimizer_produces_a_loadable_result(api, classifier, tickets, optimizer, settings):
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    body = {
        "optimizer": optimizer,
        "dataset": str(tickets.id),
        "metric": "exact_match",
        "config": CONFIGS[optimizer],
        "split": SMALL,
    }
    response = api.post(f"/api/v1/programs/{classifier.id}/optimize/", body, format="json")
    assert response.status_code == 202, response.json()
    run = runner.run_optimization(response.json()["id"])
    assert run.status == "succeeded", run.error
    metrics = run.result.performance_metrics
    assert metrics["dev_size"] == 6 and metrics["train_size"] == 8
    assert 0 <= metrics["optimized_score"] <= 1
    assert "classify.predict" in run.result.parameters
    assert run.progress["trials_done"] >= 1
