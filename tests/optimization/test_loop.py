"""The unattended loop (docs/releases.md, "The loop"): a schedule builds its dataset from
production executions and their feedback, optimizes, and starts a canary of the result instead of
applying it; the canary's rules promote it. Real Postgres, the simulated provider over HTTP, and
(in the end-to-end test) a real Celery worker and celery beat."""

import json
from typing import Any

import dspy
import pytest

from dspex_site.beat import sync_schedules
from executions.models import CognitiveExecution
from monitoring.models import AuditEvent
from optimization import metrics, runner, schedules
from optimization.models import Dataset, OptimizationRun, OptimizationSchedule
from programs.models import Canary
from tests.optimization.conftest import DEMO
from tests.support import process_env, sim_env, start_beat, start_worker, stop, wait_for

QA = [json.loads(line) for line in (DEMO / "qa.jsonl").read_text().splitlines() if line.strip()]
SCORE = metrics.build_metric("normalized_exact_match")
SPLIT = {"seed": 0, "dev_fraction": 0.5}
# Answers from the context; the default model answers in whole sentences, `sim-concise` in a few
# words: a variable search over the model makes the normalized exact match much better.
PIPELINE = {
    "lm": {"model": "$var.model", "temperature": "$var.temperature"},
    "steps": [
        {
            "name": "answer",
            "module": "Predict",
            "signature": "context: list[str], question: str -> answer: str",
            "instructions": "Answer the question from the context.",
            "inputs": {"context": "$input.context", "question": "$input.question"},
        }
    ],
}
VARIABLES = {
    "model": {
        "type": "choice",
        "choices": ["openai/sim-default", "openai/sim-concise"],
        "default": "openai/sim-default",
    },
    "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 1},
}


def score(row: dict, output: Any) -> float:
    """The feedback a user who knows the answer gives: the normalized exact match with it."""
    example = dspy.Example(**row["input"], **row["output"]).with_inputs(*row["input"])
    return float(SCORE(example, dspy.Prediction(**(output or {"answer": ""}))))


def schedule_body(program, **extra) -> dict:
    return {
        "name": "nightly-loop",
        "program": str(program.pk),
        "dataset": None,
        "from_executions": {"window_s": 3600, "use_corrected_output": True},
        "optimizer": "VariableSearch",
        "metric": "normalized_exact_match",
        "config": {"steps": 2},
        "split": SPLIT,
        "canary": {
            "percent": 50,
            "sticky_by": "input",
            "promote_when": {"min_executions": 5, "min_improvement": 0.2},
            "abort_when": {"max_error_rate": 0.2},
        },
        "interval_s": 3600,
        **extra,
    }


def give_feedback(api, executions: list[CognitiveExecution], *, correct: bool) -> None:
    by_question = {row["input"]["question"]: row for row in QA}
    for execution in executions:
        row = by_question[execution.input["question"]]
        body: dict[str, Any] = {"score": score(row, execution.output)}
        if correct:
            body["corrected_output"] = row["output"]
        given = api.post(f"/api/v1/executions/{execution.pk}/feedback/", body, format="json")
        assert given.status_code == 201, given.content


@pytest.mark.django_db
def test_loop_settings_are_checked_and_located(api, make_program, tickets):
    program = make_program("loop", pipeline=PIPELINE, variables=VARIABLES)
    cases = [
        ({"from_executions": {"min_score": 2}}, "from_executions.min_score"),
        ({"from_executions": {"window_s": 5}}, "from_executions.window_s"),
        ({"from_executions": {"colour": "red"}}, "from_executions.colour"),
        ({"from_executions": {"release": {"version": 9}}}, "from_executions.release.version"),
        ({"from_executions": None}, "dataset"),  # neither a dataset nor executions
        ({"dataset": str(tickets.pk)}, "dataset"),  # both
        ({"canary": {"percent": 100}}, "canary.percent"),
        ({"canary": {"percent": 10, "sticky_by": "moon"}}, "canary.sticky_by"),
        ({"canary": {"percent": 10, "promote_when": {"confidence": 2}}}, "canary.promote_when.confidence"),
        (
            {"canary": {"percent": 10, "abort_when": {"max_error_rate": 3}}},
            "canary.abort_when.max_error_rate",
        ),
        ({"apply": True}, "apply"),  # a canary instead of applying: not both
        ({"config": {"steps": "many"}}, "config.steps"),
    ]
    for extra, path in cases:
        response = api.post("/api/v1/schedules/", schedule_body(program, **extra), format="json")
        assert response.status_code == 400, (extra, response.content)
        assert path in [e["path"] for e in response.json()["errors"]], (extra, response.json())
    assert not OptimizationSchedule.objects.exists()

    created = api.post("/api/v1/schedules/", schedule_body(program), format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["dataset"] is None and body["last_message"] == ""
    assert body["from_executions"] == {  # stored with its defaults
        "window_s": 3600,
        "min_score": None,
        "use_corrected_output": True,
        "only_succeeded": True,
        "limit": 100_000,
        "release": None,
    }
    assert body["canary"]["promote_when"] == {
        "metric": "feedback_score",
        "min_executions": 5,
        "min_improvement": 0.2,
        "confidence": 0.95,
    }
    patched = api.patch(f"/api/v1/schedules/{body['id']}/", {"canary": {"percent": 0}}, format="json")
    assert patched.status_code == 400 and patched.json()["errors"][0]["path"] == "canary.percent"


@pytest.mark.django_db
def test_a_tick_builds_the_dataset_from_feedback_and_the_result_starts_a_canary(
    api, make_program, http_provider, settings
):
    settings.DSPEX_OPTIMIZATION_THREADS = 1
    program = make_program("loop", pipeline=PIPELINE, variables=VARIABLES)
    created = api.post("/api/v1/schedules/", schedule_body(program), format="json")
    assert created.status_code == 201, created.content
    schedule = OptimizationSchedule.objects.get(pk=created.json()["id"])

    # No execution yet: the tick starts nothing and says why.
    assert schedules.start_scheduled_run(schedule.pk) is None
    schedule.refresh_from_db()
    assert schedule.last_message.startswith("Nothing started: No execution of program loop can be an example")

    executions = []
    for row in QA:
        ran = api.post(
            f"/api/v1/programs/{program.pk}/execute/", {"input": row["input"], "wait": True}, format="json"
        )
        assert ran.status_code == 200, ran.content
        executions.append(CognitiveExecution.objects.get(pk=ran.json()["id"]))
    give_feedback(api, executions, correct=True)
    assert max(e.feedback_score for e in CognitiveExecution.objects.filter(program=program)) < 0.5

    run = schedules.start_scheduled_run(schedule.pk)
    assert run is not None and run.status == "pending" and run.canary == schedule.canary and not run.apply
    dataset = run.dataset
    assert dataset.name.startswith("nightly-loop ") and dataset.project_id == program.project_id
    rows = sorted((e.input["question"], e.output) for e in dataset.examples.all())
    assert rows == sorted((r["input"]["question"], r["output"]) for r in QA)  # the corrected outputs
    created_event = AuditEvent.objects.get(action="create", object_id=str(dataset.pk))
    assert created_event.channel == "system" and created_event.changes["corrected"] == len(QA)
    # A tick while the run is pending starts nothing more.
    assert schedules.start_scheduled_run(schedule.pk) is None
    assert OptimizationRun.objects.count() == 1

    run = runner.run_optimization(run.pk)
    assert run.status == "succeeded", run.error
    result = run.result
    assert result.variables["model"] == "openai/sim-concise"
    assert result.performance_metrics["optimized_score"] >= result.performance_metrics["baseline_score"] + 0.5
    canary = Canary.objects.get(program=program)
    assert (canary.status, canary.percent, canary.sticky_by) == ("running", 50.0, "input")
    assert (canary.candidate_version, canary.candidate_result_id) == (1, result.pk)
    assert (canary.control_version, canary.control_result_id) == (1, None)
    assert canary.promote_when["min_improvement"] == 0.2
    assert f"Canary {canary.pk} started" in run.message
    program.refresh_from_db()
    assert program.active_result_id is None  # not applied: the canary decides
    started = AuditEvent.objects.get(action="start_canary", object_id=str(program.pk))
    assert started.channel == "system"
    assert started.changes["origin"] == {"optimization_run": str(run.pk), "schedule": str(schedule.pk)}

    # While the canary runs, the schedule waits for its decision.
    assert schedules.start_scheduled_run(schedule.pk) is None
    schedule.refresh_from_db()
    assert schedule.last_message == (
        f"Nothing started: canary {canary.pk} of the program is running; its decision comes first."
    )
    assert Dataset.objects.count() == 1


@pytest.mark.slow
@pytest.mark.e2e
def test_the_loop_runs_unattended_from_feedback_to_promotion(
    api, make_program, transactional_db, http_provider, settings, tmp_path, monkeypatch
):
    """executions → feedback → the schedule fires (beat) → dataset → optimization (worker) →
    canary → traffic → feedback → promotion by the beat's canary evaluation."""
    from executions import feedback

    simlm = http_provider
    settings.DSPEX_CANARY_EVALUATE_S = 2
    sync_schedules()  # the beat rows, with the canary evaluation every 2 s
    # Feedback on a canary's execution also publishes that canary's evaluation (test_canary_worker
    # covers it); here it is switched off, so that only beat's `releases.evaluate_canaries` can decide.
    published: list[Any] = []
    monkeypatch.setattr(feedback, "_evaluate_canary", published.append)
    env = sim_env(simlm, DSPEX_OPTIMIZATION_HEARTBEAT_S="1")
    program = make_program("loop", pipeline=PIPELINE, variables=VARIABLES)
    worker = start_worker(queues="default,llm_calls,priority,optimization", concurrency=4, env=env)
    beat = None
    try:
        # 1. Production traffic, queued and run by the worker.
        def run_all(rows: list[dict]) -> list[CognitiveExecution]:
            ids = []
            for row in rows:
                queued = api.post(
                    f"/api/v1/programs/{program.pk}/execute/", {"input": row["input"]}, format="json"
                )
                assert queued.status_code == 202, queued.content
                ids.append(queued.json()["id"])
            wait_for(
                lambda: CognitiveExecution.objects.filter(id__in=ids, status="succeeded").count() == len(ids),
                120,
                "the executions to succeed in the worker",
                interval=0.5,
            )
            return list(CognitiveExecution.objects.filter(id__in=ids))

        first = run_all(QA)
        assert {(e.arm, e.optimization_result_id) for e in first} == {(None, None)}
        # 2. Users score the answers and correct them.
        give_feedback(api, first, correct=True)

        # 3. The schedule fires from beat: dataset from the executions, optimization in the worker.
        created = api.post("/api/v1/schedules/", schedule_body(program, interval_s=2), format="json")
        assert created.status_code == 201, created.content
        schedule = OptimizationSchedule.objects.get(pk=created.json()["id"])
        beat = start_beat(process_env(**env), tmp_path)
        run = wait_for(
            lambda: OptimizationRun.objects.filter(
                schedule=schedule, status__in=["succeeded", "failed"]
            ).first(),
            240,
            "the scheduled optimization run to finish in the worker",
            interval=0.5,
        )
        assert run.status == "succeeded", run.error
        assert run.dataset.examples.count() == len(QA)
        assert sorted(e.output["answer"] for e in run.dataset.examples.all()) == sorted(
            r["output"]["answer"] for r in QA
        )
        result = run.result
        assert result.variables["model"] == "openai/sim-concise"

        # 4. The result is a canary, not applied.
        canary = Canary.objects.get(program=program)
        assert canary.status == "running" and canary.candidate_result_id == result.pk
        program.refresh_from_db()
        assert program.active_result_id is None
        assert OptimizationRun.objects.filter(schedule=schedule).count() == 1  # later ticks wait for it

        # 5. Traffic splits across the arms; users score it; beat's evaluation promotes.
        second = run_all(QA)
        arms = {e.arm for e in second}
        assert arms == {"control", "candidate"}
        for execution in second:
            expected = result.pk if execution.arm == "candidate" else None
            assert (execution.canary_id, execution.optimization_result_id) == (canary.pk, expected)
            assert execution.variables["model"] == (
                "openai/sim-concise" if execution.arm == "candidate" else "openai/sim-default"
            )
        give_feedback(api, second, correct=False)
        second = list(CognitiveExecution.objects.filter(id__in=[e.id for e in second]))
        assert simlm.requests() > 0  # the worker's LM calls went over HTTP
        assert len(published) == len(second)  # each would have asked for an evaluation
        canary = wait_for(
            lambda: Canary.objects.filter(pk=canary.pk).exclude(status="running").first(),
            60,
            "beat's canary evaluation to decide",
            interval=0.5,
        )
    finally:
        if beat is not None:
            stop(beat)
        worker.stop()
        simlm.reset()

    assert canary.status == "promoted", canary.decisions
    assert canary.decisions[-1]["by"] == "rules"
    means = {
        arm: sum(e.feedback_score for e in second if e.arm == arm) / sum(e.arm == arm for e in second)
        for arm in ("candidate", "control")
    }
    assert means["candidate"] >= means["control"] + 0.5
    # Beat decided as soon as the rule held (feedback may still have been arriving): the reason
    # states the figures of that moment, which the decision keeps.
    figures = canary.decisions[-1]["figures"]
    cand, ctrl = (figures["arms"][arm]["feedback"] for arm in ("candidate", "control"))
    assert min(cand["count"], ctrl["count"]) >= 5  # promote_when.min_executions
    low, high = figures["comparison"]["ci"]
    assert low >= 0.2  # promote_when.min_improvement: the lower bound of the 95% CI
    assert canary.outcome == (
        f"promoted: feedback {cand['mean']:.2f} vs {ctrl['mean']:.2f}, 95% CI of the difference "
        f"[{low:.2f}, {high:.2f}], n = {cand['count']:,}/{ctrl['count']:,}"
    )
    program.refresh_from_db()
    assert program.active_result_id == result.pk
    assert AuditEvent.objects.filter(action="promote_canary", object_id=str(program.pk)).count() == 1
    # After the promotion the program's default traffic runs the promoted release.
    after = api.post(
        f"/api/v1/programs/{program.pk}/execute/", {"input": QA[0]["input"], "wait": True}, format="json"
    )
    assert after.status_code == 200, after.content
    row = CognitiveExecution.objects.get(pk=after.json()["id"])
    assert (row.arm, row.optimization_result_id, row.variables["model"]) == (
        None,
        result.pk,
        "openai/sim-concise",
    )


@pytest.mark.django_db
def test_a_run_in_progress_holds_the_next_tick_back_for_at_most_the_hard_limit(api, make_program, tickets):
    from datetime import timedelta

    from django.utils import timezone

    program = make_program("classify", pipeline={"signature": "ticket -> category"})
    body = {
        "name": "hourly",
        "program": str(program.pk),
        "dataset": str(tickets.pk),
        "optimizer": "LabeledFewShot",
        "metric": "exact_match",
        "interval_s": 3600,
    }
    created = api.post("/api/v1/schedules/", body, format="json")
    assert created.status_code == 201, created.content
    schedule_id = created.json()["id"]
    first = schedules.start_scheduled_run(schedule_id)
    assert first.status == "pending"
    assert schedules.start_scheduled_run(schedule_id) is None
    message = api.get(f"/api/v1/schedules/{schedule_id}/").json()["last_message"]
    assert message == f"Nothing started: run {first.pk} of this schedule is still pending."
    # Its message was lost and nothing ran it for longer than a run may take: it no longer blocks.
    OptimizationRun.objects.filter(pk=first.pk).update(
        created_at=timezone.now() - timedelta(seconds=runner.HARD_LIMIT_S + 60)
    )
    assert schedules.start_scheduled_run(schedule_id).status == "pending"
