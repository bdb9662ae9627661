"""The Python client (`dspex_client`, clients/python) against the real service: a live server on
the test database, an API key, the simulated provider over HTTP and a real Celery worker."""

import json

import pytest
from dspex_client import (
    AuthenticationFailed,
    BadRequest,
    Client,
    Execution,
    NotFound,
    PermissionDenied,
    RateLimited,
)

from dspex_site.permissions import TokenRateThrottle
from optimization.models import OptimizationRun
from tests.factories import DatasetFactory, KeyFactory, OperatorFactory, ViewerFactory
from tests.support import sim_env, start_worker

QA = {"signature": "question -> answer"}


@pytest.fixture
def client(live_server, http_provider, transactional_db):
    key = KeyFactory(user=OperatorFactory(username="nb"))
    with Client(live_server.url, token=key.key, timeout_s=30) as c:
        yield c


def test_programs_are_created_run_and_read_back_typed(client):
    qa = client.programs.create(name="client-qa", pipeline=QA, status="active")
    assert qa.version == 1 and qa.input_fields == {"question": "str"}
    run = qa.execute({"question": "What is 12 * 7?"})
    assert isinstance(run, Execution) and run.status == "succeeded" and run.is_finished
    assert run.output and "answer" in run.output
    assert run.metrics["lm_calls"] == 1 and [e for e in run.trace if e["kind"] == "lm"]
    assert client.executions.get(run.id).output == run.output
    assert [e.id for e in qa.executions()] == [run.id]
    assert client.programs.by_name("client-qa").id == qa.id
    qa.update(description="from the client")
    assert client.programs.get(qa.id).raw["description"] == "from the client"


def test_errors_carry_the_apis_code_and_where(client, live_server):
    with pytest.raises(BadRequest) as bad:
        client.programs.create(name="broken", pipeline={"signature": "question ->"})
    assert bad.value.status == 400 and bad.value.code == "invalid_program"
    assert any(e["path"].startswith("pipeline") for e in bad.value.errors)
    with pytest.raises(NotFound) as missing:
        client.programs.get("00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "not_found"
    with (
        pytest.raises(AuthenticationFailed) as unknown,
        Client(live_server.url, token="dsx_nope") as stranger,
    ):
        stranger.programs.list()
    assert unknown.value.code == "authentication_failed"
    viewer_key = KeyFactory(user=ViewerFactory(username="v"))
    qa = client.programs.create(name="guarded", pipeline=QA, status="active")
    with Client(live_server.url, token=viewer_key.key) as viewer, pytest.raises(PermissionDenied) as refused:
        viewer.programs.get(qa.id).execute({"question": "q"})
    assert refused.value.code == "permission_denied"


def test_429_is_retried_honouring_retry_after_then_raised(client, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "2/s"})
    client.api.max_retries = 3
    for _ in range(6):  # over the rate: each refused call waits as told and is tried again
        client.programs.list()
    assert client.api.retries_made >= 1
    client.api.max_retries = 0
    with pytest.raises(RateLimited) as limited:
        for _ in range(10):
            client.programs.list()
    assert limited.value.status == 429 and limited.value.retry_after is not None


def test_keys_are_issued_used_and_revoked(client, live_server):
    made = client.keys.create("ci", scopes=["read"])
    assert made.key and made.key.startswith(made.prefix)
    with Client(live_server.url, token=made.key) as ci:
        assert ci.projects()[0].name == "default"
        with pytest.raises(PermissionDenied) as scoped:
            ci.programs.create(name="nope", pipeline=QA)
        assert scoped.value.code == "scope_required"
        client.keys.revoke(made)
        with pytest.raises(AuthenticationFailed) as revoked:
            ci.programs.list()
        assert revoked.value.code == "key_revoked"
    assert all(k.key is None for k in client.keys.list())  # the secret is never listed


@pytest.mark.e2e
def test_queued_work_batches_and_optimizations_are_followed_to_the_end(client, simlm, tmp_path):
    worker = start_worker(queues="default,llm_calls,priority,optimization", env=sim_env(simlm))
    try:
        qa = client.programs.create(name="client-bg", pipeline=QA, status="active")
        queued = qa.execute({"question": "queued"}, wait=False, timeout_s=60)
        assert queued.status == "succeeded" and queued.output

        inputs = tmp_path / "inputs.jsonl"
        inputs.write_text("\n".join(json.dumps({"question": f"q{i}"}) for i in range(5)) + "\n")
        batch = qa.batch(inputs, concurrency=2)
        done = batch.follow(progress=False, timeout_s=120)
        assert (done.status, done.finished, done.total) == ("finished", 5, 5)
        rows = batch.results()
        assert [row["index"] for row in rows] == list(range(5)) and all(
            r["status"] == "succeeded" for r in rows
        )
        saved = batch.download(tmp_path / "results.jsonl")
        assert len(saved.read_text().splitlines()) == 5

        dataset = DatasetFactory(examples=6)
        run = qa.optimize(optimizer="LabeledFewShot", dataset=str(dataset.id), metric="exact_match")
        finished = run.follow(timeout_s=180, poll_s=0.5)
        assert finished.status == "succeeded", (finished.message, finished.error)
        assert OptimizationRun.objects.get(id=run.id).result_id is not None
        run.apply()
        assert client.programs.get(qa.id).raw["active_result"] == finished.result
    finally:
        worker.stop()


def test_sessions_carry_the_conversation(client):
    chat = client.programs.create(
        name="client-chat",
        pipeline={"signature": "question, history: History -> answer"},
        status="active",
    )
    session = chat.session(metadata={"user": "u1"}, ttl_s=600)
    first = session.turn({"question": "My name is Ada."})
    second = session.turn({"question": "What is my name?"})
    assert (first.turn, second.turn, second.session) == (1, 2, session.id)
    lm = next(e for e in second.trace if e["kind"] == "lm")
    assert any("My name is Ada." in str(m.get("content")) for m in lm["messages"])
    read = client.session(session.id).refresh()
    assert [h["turn"] for h in read.history] == [1, 2] and read.metadata == {"user": "u1"}
    session.delete()
    with pytest.raises(NotFound):
        session.refresh()


def test_feedback_and_datasets_from_executions(client):
    qa = client.programs.create(name="client-fb", pipeline=QA, status="active")
    runs = [qa.execute({"question": f"q{i}"}) for i in range(3)]
    client.executions.handle(runs[0].id).feedback(score=0.9, label="good")
    client.executions.handle(runs[1].id).feedback(score=0.2, corrected_output={"answer": "fixed"})
    assert client.executions.get(runs[0].id).raw["feedback"] == {"count": 1, "score": 0.9}
    entries = client.executions.handle(runs[1].id).feedback_entries()
    assert entries[0]["corrected_output"] == {"answer": "fixed"}
    built = client.datasets.from_executions(name="from-prod", program=qa, min_score=0.5)
    assert built["included"] == 1
    with pytest.raises(BadRequest) as bad:
        client.executions.handle(runs[2].id).feedback(score=3)
    assert bad.value.errors[0]["path"] == "score"


def test_plain_dspy_state_goes_in_and_out(client, tmp_path):
    import dspy

    qa = client.programs.create(name="client-state", pipeline=QA, status="active")

    class PlainQA(dspy.Module):  # the structure DSPex compiles a one-step program to: one `main`
        def __init__(self) -> None:
            super().__init__()
            self.main = dspy.Predict("question -> answer")

    module = PlainQA()
    module.main.demos = [dspy.Example(question="2+2?", answer="4")]
    saved = tmp_path / "state.json"
    module.save(str(saved))
    result = qa.import_state(saved)
    assert result["optimizer_type"] == "imported"
    exported = qa.export_state(result["id"], tmp_path / "back.json")
    loaded = PlainQA()
    loaded.load(str(tmp_path / "back.json"))
    assert [d["answer"] for d in loaded.main.demos] == ["4"] and exported["main"]["demos"]


def test_aliases_and_canaries_through_the_client(client):
    from optimization.models import OptimizationResult
    from programs.spec import compile_program

    qa = client.programs.create(name="client-releases", pipeline=QA, status="active")
    state = compile_program(QA, {}).dump_state()
    result = OptimizationResult.objects.create(
        program_id=qa.id, program_version=1, optimizer_type="manual", parameters=state
    )
    alias = qa.set_alias("stable", 1, str(result.id))
    assert (alias["name"], alias["optimization_result"]) == ("stable", str(result.id))
    assert [a["name"] for a in qa.aliases()] == ["stable"]
    run = qa.execute({"question": "hi"}, alias="stable")
    assert (run.alias, run.arm, run.optimization_result) == ("stable", None, str(result.id))
    with pytest.raises(BadRequest, match="alias"):
        qa.execute({"question": "hi"}, alias="missing")

    canary = qa.start_canary(1, str(result.id), percent=50, sticky_by="input")
    assert canary["status"] == "running" and canary["candidate"]["optimization_result"] == str(result.id)
    arms = {qa.execute({"question": f"q{i}"}).arm for i in range(10)}
    assert arms == {"control", "candidate"}
    figures = qa.canary()["figures"]["arms"]
    assert figures["control"]["executions"] + figures["candidate"]["executions"] == 10
    aborted = qa.abort_canary()
    assert aborted["status"] == "aborted" and aborted["outcome"].startswith("aborted by nb")
    assert qa.execute({"question": "after"}).arm is None


def test_a_schedule_closes_the_loop_through_the_client(client):
    """The unattended loop's schedule (docs/releases.md, "The loop"): created from the client,
    its settings checked by the service (a bad one raises with the API's path)."""
    qa = client.programs.create(name="client-loop", pipeline=QA, status="active")
    body = {
        "optimizer": "LabeledFewShot",
        "metric": "exact_match",
        "from_executions": {"window_s": 86400, "min_score": 0.8, "use_corrected_output": True},
        "canary": {"percent": 10, "sticky_by": "user", "promote_when": {"min_executions": 50}},
        "cron": "0 3 * * *",
    }
    created = qa.schedule("client-nightly", **body)
    assert created["dataset"] is None and created["from_executions"]["min_score"] == 0.8
    assert created["canary"]["promote_when"]["min_executions"] == 50
    with pytest.raises(BadRequest) as refused:
        qa.schedule("client-bad", **{**body, "canary": {"percent": 10}, "apply": True})
    assert refused.value.code == "invalid" and [e["path"] for e in refused.value.errors] == ["apply"]
