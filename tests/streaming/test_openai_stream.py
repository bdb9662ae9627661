"""`POST /v1/chat/completions` with `stream: true`, read by the official `openai` client:
`chat.completion.chunk`s with the program's answer as content deltas, usage in the last chunk
(`stream_options.include_usage`), the stored execution behind it, and a failure as an error."""

import openai
import pytest

from executions.models import CognitiveExecution
from tests.factories import ProgramFactory

QA = {"signature": "question -> answer"}


@pytest.fixture
def client(live_server, http_provider, key):
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=key.key, max_retries=0, timeout=30)


def test_a_streamed_completion_sends_the_answer_in_chunks_with_usage_last(client, http_provider):
    http_provider.configure(token_delay_ms=10)
    ProgramFactory(name="qa", pipeline=QA, status="active")
    stream = client.chat.completions.create(
        model="dspex/qa",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.model == "dspex/qa" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert not chunks[-1].choices and chunks[-1].usage is not None
    execution = CognitiveExecution.objects.get(id=chunks[0].id.removeprefix("chatcmpl-"))
    assert execution.status == "succeeded" and "".join(content).strip() == execution.output["answer"]
    assert chunks[-1].usage.prompt_tokens == execution.metrics["prompt_tokens"] > 0
    assert (
        chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )


def test_without_include_usage_no_usage_chunk(client, http_provider):
    ProgramFactory(name="qa", pipeline=QA, status="active")
    chunks = list(
        client.chat.completions.create(
            model="dspex/qa", messages=[{"role": "user", "content": "hi?"}], stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_a_failed_streamed_run_is_an_error_and_a_failed_execution(client, http_provider):
    http_provider.configure(error_rate=1.0, error_status=500)
    ProgramFactory(name="qa", pipeline=QA, status="active")
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="dspex/qa", messages=[{"role": "user", "content": "fail?"}], stream=True
            )
        )
    assert CognitiveExecution.objects.get().status == "failed"
