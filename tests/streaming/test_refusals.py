"""Refusals of streamed work (docs/streaming.md "Refusals before the stream"), over real HTTP:

* spend limits (402 `budget_exceeded`), rate limits (429 `rate_limited`) and the API throttle
  (429 `throttled`) answer their usual JSON error (OpenAI's error shape on `/v1/chat/completions`)
  before any stream starts, and nothing is stored;
* admission inside the LM path during the run (a provider's breaker open, its bulkhead full)
  opens the stream and ends it with an `error` event and a failed stored execution, at once,
  never a hung connection;
* more concurrent streams in one process than DSPy's `async_max_workers` (8) all finish.
"""

import concurrent.futures
import time

import openai
import pytest

from dspex_site.permissions import TokenRateThrottle
from executions.models import CognitiveExecution
from llm import budgets, resilience
from llm.models import Budget
from tests.factories import ProgramFactory, default_project
from tests.streaming.conftest import events

QA = {"signature": "question -> answer"}


@pytest.fixture(autouse=True)
def _fresh_limits(settings, http_provider):
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1000, "completion": 1000},
    }
    resilience._redis.skip_until = 0.0
    settings.DSPEX_BUDGETS = {}
    budgets.invalidate()
    yield
    budgets.invalidate()


@pytest.fixture
def chat(live_server, key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key.key, max_retries=0, timeout=30)


def execute(post, program, question, **body):
    return post(
        f"/api/v1/programs/{program.id}/execute/", {"input": {"question": question}, "stream": True, **body}
    )


def streamed_chat(chat, question):
    return list(
        chat.chat.completions.create(
            model="dspex/qa", messages=[{"role": "user", "content": question}], stream=True
        )
    )


def assert_refused_before_the_stream(response, status, code):
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["code"] == code


def test_a_spent_budget_refuses_streamed_execute_and_chat_before_the_stream(post, chat, http_provider):
    program = ProgramFactory(name="qa", pipeline=QA)
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), daily_limit_usd="0.001")
    budgets.invalidate()
    assert list(events(execute(post, program, "spends it")))[-1][0] == "done"
    before = CognitiveExecution.objects.count()
    http_provider.clear()

    assert_refused_before_the_stream(execute(post, program, "after"), 402, "budget_exceeded")
    with pytest.raises(openai.APIStatusError) as refused:
        streamed_chat(chat, "after, as a chat")
    assert refused.value.status_code == 402
    assert (
        refused.value.body["code"] == "budget_exceeded" and refused.value.body["type"] == "insufficient_quota"
    )
    assert CognitiveExecution.objects.count() == before and http_provider.requests() == 0


def test_a_rate_limit_refuses_streamed_execute_and_chat_before_the_stream(post, chat, http_provider):
    program = ProgramFactory(name="qa", pipeline=QA)
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), requests_per_minute=1)
    budgets.invalidate()
    assert list(events(execute(post, program, "the one allowed")))[-1][0] == "done"
    before = CognitiveExecution.objects.count()

    refused = execute(post, program, "second")
    assert_refused_before_the_stream(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) >= 1
    with pytest.raises(openai.RateLimitError) as chat_refused:
        streamed_chat(chat, "second, as a chat")
    assert (
        chat_refused.value.body["code"] == "rate_limited"
        and chat_refused.value.body["type"] == "rate_limit_error"
    )
    assert CognitiveExecution.objects.count() == before


def test_the_api_throttle_refuses_streamed_execute_and_chat_before_the_stream(post, chat, monkeypatch):
    program = ProgramFactory(name="qa", pipeline=QA)
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"user": "2/min"})
    assert [execute(post, program, f"q{i}").status_code for i in range(2)] == [200, 200]
    before = CognitiveExecution.objects.count()

    assert_refused_before_the_stream(execute(post, program, "third"), 429, "throttled")
    with pytest.raises(openai.RateLimitError) as chat_refused:
        streamed_chat(chat, "third, as a chat")
    assert chat_refused.value.body["code"] == "throttled"
    assert CognitiveExecution.objects.count() == before


def wait_finished(execution_id, timeout=15):
    deadline = time.monotonic() + timeout
    execution = CognitiveExecution.objects.get(id=execution_id)
    while execution.status not in CognitiveExecution.FINISHED and time.monotonic() < deadline:
        time.sleep(0.1)
        execution.refresh_from_db()
    return execution


def test_an_open_breaker_during_a_stream_is_an_error_event_and_a_failed_execution(
    post, chat, http_provider, settings
):
    settings.DSPEX_PROVIDER_LIMITS = {"openai": {"failure_threshold": 2, "reset_timeout_s": 60}}
    program = ProgramFactory(name="qa", pipeline=QA)
    http_provider.configure(error_rate=1.0, error_status=500)
    for i in range(2):
        assert list(events(execute(post, program, f"failing {i}", cache=False)))[-1][0] == "error"
    http_provider.configure(error_rate=0)
    http_provider.clear()

    started = time.monotonic()
    response = execute(post, program, "while open", cache=False)
    assert response.status_code == 200  # admission is inside the run: the stream has started
    seen = list(events(response))
    assert time.monotonic() - started < 5  # failed fast, not hung
    assert seen[-1][0] == "error" and seen[-1][1]["code"] == "circuit_open", seen
    assert wait_finished(seen[-1][1]["execution"]).status == "failed"
    with pytest.raises(openai.APIError):  # the OpenAI endpoint's stream ends with its error object
        streamed_chat(chat, "while open, as a chat")
    failed = CognitiveExecution.objects.filter(status="failed", error__type="circuit_open")
    assert failed.count() == 2 and http_provider.requests() == 0  # neither reached the provider


def test_a_full_bulkhead_during_a_stream_is_an_error_event_and_a_failed_execution(
    post, http_provider, settings
):
    settings.DSPEX_PROVIDER_LIMITS = {"openai": {"max_concurrent": 1, "max_wait_s": 0.5}}
    settings.DSPEX_RATE_LIMIT_MAX_WAIT_S = 0.5
    http_provider.configure(token_delay_ms=300)
    program = ProgramFactory(name="qa", pipeline=QA)
    holding = execute(post, program, "a slow one that holds the only slot", cache=False)
    assert next(events(holding))[0] == "step"  # running, its call in flight
    time.sleep(0.5)

    started = time.monotonic()
    seen = list(events(execute(post, program, "no slot for me", cache=False)))
    assert time.monotonic() - started < 10
    assert seen[-1][0] == "error" and seen[-1][1]["code"] == "bulkhead_full", seen
    assert wait_finished(seen[-1][1]["execution"]).status == "failed"
    assert list(events(holding))[-1][0] == "done"


def test_more_concurrent_streams_than_dspys_async_workers_all_finish(post, http_provider):
    # dspy.asyncify's one process-wide limiter (async_max_workers = 8) used to hang the ninth
    # concurrent stream forever (executions.streaming._Call).
    http_provider.configure(token_delay_ms=30)
    program = ProgramFactory(name="qa", pipeline=QA)

    def one(i):
        return list(events(execute(post, program, f"What is {i} times {i}?", cache=False)))[-1]

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        ends = list(pool.map(one, range(12), timeout=60))
    assert [event for event, _ in ends] == ["done"] * 12
    assert CognitiveExecution.objects.filter(status="succeeded").count() == 12
