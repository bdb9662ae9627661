"""Aliases, release recording and canaries (docs/releases.md), through the API with real
Postgres and the simulated provider over HTTP."""

import json

import pytest

from executions.models import CognitiveExecution
from monitoring.models import AuditEvent
from programs import releases
from programs.models import Canary
from programs.spec import compile_program
from tests.factories import QA_PIPELINE, OptimizationResultFactory, ProgramFactory

pytestmark = pytest.mark.django_db


def tuned_result(program, instructions="Answer in one word."):
    state = compile_program(QA_PIPELINE, {}).dump_state()
    for value in state.values():
        if isinstance(value, dict) and "signature" in value:
            value["signature"]["instructions"] = instructions
    return OptimizationResultFactory(program=program, parameters=state)


def execute(api, program, **body):
    response = api.post(
        f"/api/v1/programs/{program.pk}/execute/",
        {"input": {"question": body.pop("question", "what?")}, "wait": True, **body},
        format="json",
    )
    return response


def test_alias_runs_its_release_and_moving_it_is_audited_with_a_diff(api, http_provider):
    program = ProgramFactory()
    result = tuned_result(program)
    url = f"/api/v1/programs/{program.pk}/aliases/stable/"
    created = api.put(url, {"version": 1, "optimization_result": str(result.pk)}, format="json")
    assert created.status_code == 201, created.content
    listed = api.get(f"/api/v1/programs/{program.pk}/aliases/").json()
    assert [(a["name"], a["version"], a["optimization_result"]) for a in listed] == [
        ("stable", 1, str(result.pk))
    ]

    ran = execute(api, program, alias="stable")
    assert ran.status_code == 200, ran.content
    row = CognitiveExecution.objects.get(pk=ran.json()["id"])
    assert (row.program_version, row.optimization_result_id, row.alias, row.arm) == (
        1,
        result.pk,
        "stable",
        None,
    )
    plain = CognitiveExecution.objects.get(pk=execute(api, program).json()["id"])
    assert (plain.optimization_result_id, plain.alias) == (None, "")

    moved = api.put(url, {"version": 1, "optimization_result": None}, format="json")
    assert moved.status_code == 200
    event = AuditEvent.objects.filter(action="move_alias").order_by("-id").first()
    assert event.changes["from"] == {"version": 1, "optimization_result": str(result.pk)}
    assert event.changes["to"] == {"version": 1, "optimization_result": None}
    (predictor,) = event.changes["diff"]["predictors"].values()
    assert predictor["instructions"]["from"] == "Answer in one word."


def test_bad_release_input_is_a_400_naming_the_field(api, http_provider):
    program, other = ProgramFactory(), ProgramFactory()
    foreign = tuned_result(other)
    url = f"/api/v1/programs/{program.pk}/aliases/x/"
    bad = api.put(url, {"version": 9}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "version"
    bad = api.put(url, {"version": 1, "optimization_result": str(foreign.pk)}, format="json")
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"] == "optimization_result"
    unknown = execute(api, program, alias="nope")
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["path"] == "alias"
    assert not CognitiveExecution.objects.filter(program=program).exists()

    canary_url = f"/api/v1/programs/{program.pk}/canary/"
    for percent in (0, 100, 150):
        refused = api.post(canary_url, {"candidate": {"version": 1}, "percent": percent}, format="json")
        assert refused.status_code == 400 and refused.json()["errors"][0]["path"] == "percent"
    same = api.post(canary_url, {"candidate": {"version": 1}, "percent": 10}, format="json")
    assert same.status_code == 400 and same.json()["errors"][0]["path"] == "candidate"
    rule = api.post(
        canary_url,
        {
            "candidate": {"version": 1, "optimization_result": str(tuned_result(program).pk)},
            "percent": 10,
            "promote_when": {"confidence": 2},
        },
        format="json",
    )
    assert rule.status_code == 400 and rule.json()["errors"][0]["path"] == "promote_when.confidence"
    assert not Canary.objects.exists()
    assert api.post(f"{canary_url}promote/").status_code == 409


def test_canary_splits_sticky_reports_per_arm_and_promotes_by_hand(api, http_provider):
    program = ProgramFactory()
    result = tuned_result(program)
    url = f"/api/v1/programs/{program.pk}/canary/"
    body = {
        "candidate": {"version": 1, "optimization_result": str(result.pk)},
        "percent": 50,
        "sticky_by": "input",
    }
    started = api.post(url, body, format="json")
    assert started.status_code == 201, started.content
    assert api.post(url, body, format="json").status_code == 409

    arms = {}
    for i in range(12):
        ran = execute(api, program, question=f"q{i}")
        assert ran.status_code == 200, ran.content
        row = CognitiveExecution.objects.get(pk=ran.json()["id"])
        expected = (1, result.pk) if row.arm == "candidate" else (1, None)
        assert (row.program_version, row.optimization_result_id) == expected
        arms[f"q{i}"] = row.arm
        again = CognitiveExecution.objects.get(pk=execute(api, program, question=f"q{i}").json()["id"])
        assert again.arm == row.arm  # sticky: the same input stays on its arm
    assert set(arms.values()) == {"control", "candidate"}

    report = api.get(url).json()
    figures = report["figures"]["arms"]
    assert figures["candidate"]["executions"] + figures["control"]["executions"] == 24
    assert figures["candidate"]["executions"] == 2 * list(arms.values()).count("candidate")
    assert figures["control"]["latency_ms"]["p50"] is not None and figures["control"]["error_rate"] == 0

    promoted = api.post(f"{url}promote/")
    assert promoted.status_code == 200 and promoted.json()["status"] == "promoted"
    program.refresh_from_db()
    assert program.active_result_id == result.pk
    after = CognitiveExecution.objects.get(pk=execute(api, program).json()["id"])
    assert (after.arm, after.optimization_result_id) == (None, result.pk)
    assert AuditEvent.objects.filter(action="promote_canary", object_id=str(program.pk)).exists()


def make_canary(program, result, **rules):
    return releases.start_canary(program, 1, result.pk, 50, "input", channel="api", **rules)


def add(canary, arm, scores, status="succeeded", cost=0.001):
    for score in scores:
        CognitiveExecution.objects.create(
            program=canary.program,
            program_version=1,
            input={"question": "x"},
            status=status,
            canary=canary,
            arm=arm,
            feedback_score=score,
            feedback_count=score is not None,
            duration_ms=10,
            metrics={"cost_usd": cost},
        )


def test_rules_promote_on_a_significant_improvement_and_explain_it(db):
    program = ProgramFactory()
    canary = make_canary(
        program, tuned_result(program), promote_when={"min_executions": 20, "min_improvement": 0.02}
    )
    add(canary, "control", [0.7, 0.8] * 10)
    add(canary, "candidate", [0.75, 0.8] * 5)
    assert releases.evaluate(canary.pk) == "waiting"  # too few candidate scores
    add(canary, "candidate", [0.85, 0.95] * 10)
    assert releases.evaluate(canary.pk) == "promoted"
    canary.refresh_from_db()
    assert canary.outcome.startswith("promoted: feedback 0.86 vs 0.75, 95% CI of the difference [")
    assert "n = 30/20" in canary.outcome
    assert canary.decisions[-1]["figures"]["comparison"]["test"] == "welch_t"
    program.refresh_from_db()
    assert program.active_result_id == canary.candidate_result_id


def test_no_promotion_without_confidence_and_abort_on_a_guard(db):
    program = ProgramFactory()
    canary = make_canary(program, tuned_result(program), promote_when={"min_executions": 5})
    add(canary, "control", [0.2, 0.9, 0.5, 0.7, 0.4, 0.6])
    add(canary, "candidate", [0.3, 0.95, 0.5, 0.6, 0.45, 0.7])
    assert releases.evaluate(canary.pk) == "waiting"
    canary.status = Canary.Status.ABORTED
    canary.save()

    guarded = make_canary(
        program, tuned_result(program), abort_when={"max_error_rate": 0.1, "min_executions": 5}
    )
    add(guarded, "control", [None] * 5)
    add(guarded, "candidate", [None] * 4)
    add(guarded, "candidate", [None] * 2, status="failed")
    assert releases.evaluate(guarded.pk) == "aborted"
    guarded.refresh_from_db()
    assert guarded.outcome.startswith("aborted: candidate error rate 33.3% > 10.0%")
    program.refresh_from_db()
    assert program.active_result_id is None


def test_the_openai_endpoint_runs_an_alias_named_after_the_at_sign(api, http_provider):
    program = ProgramFactory(name="helpdesk")
    result = tuned_result(program)
    assert (
        api.put(
            f"/api/v1/programs/{program.pk}/aliases/beta/",
            {"version": 1, "optimization_result": str(result.pk)},
            format="json",
        ).status_code
        == 201
    )
    chat = {"messages": [{"role": "user", "content": "hello?"}]}
    answered = api.post("/v1/chat/completions", {"model": "dspex/helpdesk@beta", **chat}, format="json")
    assert answered.status_code == 200, answered.content
    row = CognitiveExecution.objects.get(program=program)
    assert (row.alias, row.optimization_result_id) == ("beta", result.pk)
    unknown = api.post("/v1/chat/completions", {"model": "dspex/helpdesk@nope", **chat}, format="json")
    assert unknown.status_code == 400 and "no alias 'nope'" in unknown.content.decode()
    assert CognitiveExecution.objects.filter(program=program).count() == 1


def test_a_session_never_switches_arms(api, http_provider):
    program = ProgramFactory()
    releases.start_canary(program, 1, tuned_result(program).pk, 50, "session", channel="api")
    seen = set()
    for _ in range(6):
        session = api.post("/api/v1/sessions/", {"program": str(program.pk)}, format="json")
        assert session.status_code == 201, session.content
        arms = set()
        for turn in range(3):
            ran = api.post(
                f"/api/v1/sessions/{session.json()['id']}/turns/",
                {"input": {"question": f"t{turn}"}},
                format="json",
            )
            assert ran.status_code == 200, ran.content
            arms.add(ran.json()["arm"])
        assert len(arms) == 1  # every turn of one session on the same arm
        seen |= arms
    assert seen <= {"control", "candidate"} and seen


def test_a_batch_naming_an_alias_runs_the_alias_s_release_with_its_tuned_variables(api):
    """The alias names version 1 with a result that tunes the instructions and the temperature;
    the program has moved on to version 2 (another input field). Every batch item is checked
    against version 1, stores the alias's release and its tuned variables, and runs them."""
    pipeline = {
        "lm": {"model": "sim/default", "temperature": "$var.temperature"},
        "signature": "question -> answer",
    }
    variables = {"temperature": {"type": "float", "default": 0.0, "min": 0, "max": 1}}
    program = ProgramFactory(pipeline=pipeline, variables=variables)
    state = compile_program(pipeline, variables).dump_state()
    for value in state.values():
        if isinstance(value, dict) and "signature" in value:
            value["signature"]["instructions"] = "Answer in one word, stable release."
    result = OptimizationResultFactory(program=program, parameters=state, variables={"temperature": 0.7})
    assert (
        api.put(
            f"/api/v1/programs/{program.pk}/aliases/stable/",
            {"version": 1, "optimization_result": str(result.pk)},
            format="json",
        ).status_code
        == 201
    )
    program.pipeline = {**pipeline, "signature": "query -> answer"}
    program.save()
    assert program.version == 2

    inputs = [{"question": "one?"}, {"question": "two?"}, {"question": "three?"}]
    created = api.post(
        "/api/v1/batches/", {"program": str(program.pk), "inputs": inputs, "alias": "stable"}, format="json"
    )
    assert created.status_code == 202, created.content
    items = list(CognitiveExecution.objects.filter(batch_id=created.json()["id"]).order_by("batch_index"))
    assert [(i.program_version, i.optimization_result_id, i.alias, i.arm, i.variables) for i in items] == [
        (1, result.pk, "stable", None, {"temperature": 0.7})
    ] * 3

    # Without the alias the batch is of version 2, whose input is `query`: refused, nothing stored.
    current = api.post("/api/v1/batches/", {"program": str(program.pk), "inputs": inputs}, format="json")
    assert current.status_code == 400
    assert {e["path"] for e in current.json()["errors"]} >= {"inputs[0].query", "inputs[0].question"}
    bad = api.post(
        "/api/v1/batches/",
        {"program": str(program.pk), "inputs": [{"query": "x"}], "alias": "stable"},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["path"].startswith("inputs[0].")
    assert CognitiveExecution.objects.filter(program=program).count() == 3

    from executions import runner

    outcome = runner.run_execution(items[0].pk)
    ran = outcome.execution
    assert ran.status == "succeeded", ran.error
    (call,) = [entry for entry in ran.trace if entry["kind"] == "lm"]
    assert "Answer in one word, stable release." in json.dumps(call["messages"])


def test_a_decision_keeps_the_figures_it_was_made_on(db):
    """Feedback arriving between the rules' count and the decision's write does not make the
    recorded figures disagree with the reason (seen in the end-to-end loop under load)."""
    program = ProgramFactory()
    canary = make_canary(program, tuned_result(program), promote_when={"min_executions": 3})
    add(canary, "control", [0.1, 0.2, 0.1])
    add(canary, "candidate", [0.9, 0.8, 0.9])
    arms = releases.figures(canary)
    add(canary, "candidate", [0.1])  # arrives meanwhile
    releases.finish(canary, Canary.Status.PROMOTED, "promoted: as counted", channel="rules", arms=arms)
    canary.refresh_from_db()
    recorded = canary.decisions[-1]["figures"]["arms"]
    assert (recorded["candidate"]["feedback"]["count"], recorded["candidate"]["feedback"]["mean"]) == (
        3,
        0.8667,
    )
    assert releases.report(canary)["arms"]["candidate"]["feedback"]["count"] == 4  # counted now
