"""`POST /api/v1/programs/{id}/execute/` with `"stream": true` over real HTTP: tokens through
DSPy's streaming and the gateway (simulated provider streaming over HTTP), steps, the stored
execution before `done`, cache hits at once, refusals before the stream, failures as `error`,
and a client that disconnects (the run finishes and is stored)."""

import time

import pytest
import requests

from executions.models import CognitiveExecution
from tests.factories import ProgramFactory
from tests.streaming.conftest import events

QA = {"signature": "question -> answer"}
TWO_STEPS = {
    "steps": [
        {
            "name": "think",
            "module": "ChainOfThought",
            "signature": "question -> draft",
            "inputs": {"question": "$input.question"},
        },
        {"name": "polish", "signature": "draft -> answer", "inputs": {"draft": "$think.draft"}},
    ]
}


def execute(post, program, body=None, **kwargs):
    payload = {"input": {"question": "What is the capital of France?"}, "stream": True, **(body or {})}
    return post(f"/api/v1/programs/{program.id}/execute/", payload, **kwargs)


def test_tokens_arrive_as_the_provider_streams_and_done_is_the_stored_execution(post, http_provider):
    http_provider.configure(token_delay_ms=30)
    http_provider.clear()
    program = ProgramFactory(name="qa", pipeline=QA)
    started = time.perf_counter()
    response = execute(post, program)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    seen, arrivals = [], []
    for event, data in events(response):
        seen.append((event, data))
        arrivals.append(time.perf_counter() - started)
    kinds = [event for event, _ in seen]
    assert kinds[0] == "step" and seen[0][1] == {"step": "main", "status": "started"}
    tokens = [data for event, data in seen if event == "token"]
    assert len(tokens) >= 2, seen  # the answer came in pieces, not in one
    assert {(t["step"], t["field"]) for t in tokens} == {("main", "answer")}
    token_times = [at for (event, _), at in zip(seen, arrivals, strict=True) if event == "token"]
    assert token_times[-1] - token_times[0] >= 0.02  # spread over time, as the provider wrote them
    assert kinds[-1] == "done" and ("step", {"step": "main", "status": "finished"}) in seen
    done = seen[-1][1]
    execution = CognitiveExecution.objects.get(id=done["id"])
    assert execution.status == "succeeded" and done["status"] == "succeeded"
    assert (
        "".join(t["chunk"] for t in tokens).strip() == execution.output["answer"] == done["output"]["answer"]
    )
    lm = [entry for entry in execution.trace if entry["kind"] == "lm"]
    assert len(lm) == 1 and lm[0]["prompt_tokens"] > 0 and lm[0]["completion_tokens"] > 0
    assert execution.metrics["prompt_tokens"] > 0
    assert http_provider.requests() == 1


def test_a_cached_answer_streams_at_once(post, http_provider):
    program = ProgramFactory(name="qa", pipeline=QA)
    first = list(events(execute(post, program)))
    http_provider.configure(token_delay_ms=200)
    http_provider.clear()
    started = time.perf_counter()
    second = list(events(execute(post, program, {"variables": {}})))
    assert time.perf_counter() - started < 1.0
    assert http_provider.requests() == 0
    answer = first[-1][1]["output"]["answer"]
    tokens = [data for event, data in second if event == "token"]
    assert "".join(t["chunk"] for t in tokens).strip() == answer and second[-1][0] == "done"


def test_steps_of_a_pipeline_stream_in_order(post, http_provider):
    program = ProgramFactory(name="two", pipeline=TWO_STEPS)
    seen = list(events(execute(post, program)))
    steps = [(data["step"], data["status"]) for event, data in seen if event == "step"]
    assert steps == [
        ("think", "started"),
        ("think", "finished"),
        ("polish", "started"),
        ("polish", "finished"),
    ]
    fields = {(data["step"], data["field"]) for event, data in seen if event == "token"}
    assert {("think", "reasoning"), ("think", "draft"), ("polish", "answer")} <= fields
    assert seen[-1][0] == "done"


def test_a_refusal_is_its_usual_json_error_before_any_stream(post, http_provider):
    program = ProgramFactory(name="qa", pipeline=QA)
    body = {"input": {"question": "q", "colour": "red"}, "stream": True}
    response = post(f"/api/v1/programs/{program.id}/execute/", body)
    assert response.status_code == 400 and response.headers["Content-Type"].startswith("application/json")
    assert "input.colour" in response.text
    assert not CognitiveExecution.objects.exists()
    bad = post(f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "q"}, "stream": "maybe"})
    assert bad.status_code == 400 and "stream" in bad.json()["detail"] + str(bad.json())


def test_a_provider_failure_mid_run_ends_with_error_and_a_failed_execution(post, http_provider):
    http_provider.configure(error_rate=1.0, error_status=500)
    program = ProgramFactory(name="qa", pipeline=QA)
    seen = list(events(execute(post, program, {"cache": False})))
    assert seen[-1][0] == "error", seen
    error = seen[-1][1]
    assert error["code"] and error["detail"] and set(error) == {"code", "detail", "execution"}
    execution = CognitiveExecution.objects.get(id=error["execution"])
    assert execution.status == "failed" and execution.error["type"] == error["code"]
    assert any(entry["kind"] == "lm" for entry in execution.trace)


def test_a_client_that_disconnects_leaves_a_finished_stored_execution(post, http_provider):
    http_provider.configure(token_delay_ms=50)
    program = ProgramFactory(name="qa", pipeline=QA)
    response = execute(post, program)
    for event, _data in events(response):
        if event == "token":
            break
    response.close()
    deadline = time.monotonic() + 15
    execution = CognitiveExecution.objects.get()
    while execution.status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        execution.refresh_from_db()
    assert execution.status == "succeeded" and execution.output["answer"]
    assert execution.metrics["prompt_tokens"] > 0 and any(e["kind"] == "lm" for e in execution.trace)


@pytest.mark.parametrize("count", [3])
def test_concurrent_streams_each_get_their_own_tokens(post, http_provider, count):
    import concurrent.futures

    http_provider.configure(token_delay_ms=10)
    program = ProgramFactory(name="qa", pipeline=QA)

    def one(i):
        seen = list(events(execute(post, program, {"input": {"question": f"What is {i} + {i}?"}})))
        tokens = "".join(d["chunk"] for e, d in seen if e == "token").strip()
        return tokens, seen[-1]

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        results = list(pool.map(one, range(count)))
    for tokens, (event, done) in results:
        assert event == "done" and tokens == done["output"]["answer"]
    assert len({done["id"] for _, (_, done) in results}) == count


def test_streams_are_counted_with_time_to_first_token_and_carry_no_secret(post, http_provider, live_server):
    from tests.monitoring.test_metrics import sample

    def scrape():
        return requests.get(f"{live_server.url}/metrics", timeout=10).text

    http_provider.configure(token_delay_ms=20)
    program = ProgramFactory(name="metered", pipeline=QA)
    before = scrape()
    response = execute(post, program)
    raw = b"".join(response.iter_content(chunk_size=None))
    after = scrape()

    def delta(name, **labels):
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("dspex_execution_stream_total", program="metered", outcome="done") == 1
    assert delta("dspex_time_to_first_token_seconds_count", program="metered") == 1
    assert 0 < delta("dspex_time_to_first_token_seconds_sum", program="metered") < 10
    assert b"event: done" in raw and b"sk-test-not-a-real-key" not in raw
