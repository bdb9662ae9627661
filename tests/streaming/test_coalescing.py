"""How a streamed run keeps up under load (docs/streaming.md "Serving"): the provider's text
deltas that arrived while DSPy's streaming path was busy reach it as one (`llm.gateway.coalesced`),
the events a relay had not written yet go out in one write with a field's tokens merged
(`StreamSink.drain`), and every stream of a process runs on one event loop thread."""

import asyncio
import threading
import time

import pytest
from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, StreamStartEvent, TextDelta

from executions.models import CognitiveExecution
from executions.streaming import StreamSink, arelay, sse
from llm.gateway import coalesced
from tests.factories import ProgramFactory
from tests.streaming.conftest import events

QA = {"signature": "question -> answer"}


def provider(words: list[str], delay_s: float = 0.0, fail: BaseException | None = None):
    """A provider's stream events: start, one text delta per word (sent `delay_s` apart), end. As
    from a socket: a delta sent while nobody was reading is there at once when read."""
    yield StreamStartEvent(model="m")
    started = time.perf_counter()
    for position, word in enumerate(words, 1):
        wait = started + position * delay_s - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        yield StreamDeltaEvent(delta=TextDelta(text=word))
    if fail is not None:
        raise fail
    yield StreamEndEvent(finish_reason="stop")


def texts(stream) -> list[str]:
    return [e.delta.text for e in stream if e.type == "delta"]


def test_a_consumer_that_keeps_up_gets_each_delta_as_the_provider_sent_it():
    words = [f"w{i} " for i in range(8)]
    assert texts(coalesced(provider(words, delay_s=0.02))) == words


def test_a_consumer_that_fell_behind_gets_what_arrived_meanwhile_as_one_delta():
    words = [f"w{i} " for i in range(30)]
    received = []
    for event in coalesced(provider(words, delay_s=0.002)):
        if event.type == "delta":
            received.append(event.delta.text)
            time.sleep(0.02)  # a busy consumer: about ten deltas arrive per one it handles
    assert "".join(received) == "".join(words)  # nothing lost, nothing reordered
    assert len(received) < len(words) / 3, received


def test_with_many_streams_open_a_reader_lets_deltas_gather_between_reads(monkeypatch):
    """0.2 ms per open stream: at 250 open a reader that had to wait for a delta waits 50 ms more
    before its next read, so a fast consumer too gets one delta for several (and this process one
    wake-up per stream per 50 ms, not one per provider delta: ordinary requests keep the GIL)."""
    from llm import gateway

    monkeypatch.setattr(gateway, "_open_streams", 249)  # and this one
    words = [f"w{i} " for i in range(20)]
    started = time.perf_counter()
    received = texts(coalesced(provider(words, delay_s=0.01)))
    assert "".join(received) == "".join(words)
    assert len(received) <= len(words) / 2, received
    assert time.perf_counter() - started < 2.0  # gathered, not slowed down much
    assert gateway._open_streams == 249  # this stream counted itself out again


def test_events_other_than_text_are_never_merged_and_keep_their_order():
    stream = list(coalesced(provider(["a ", "b "])))
    kinds = [e.type for e in stream]
    assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"delta"}
    assert "".join(texts(stream)) == "a b "


def test_a_provider_failure_is_raised_as_its_own_exception_after_what_came_before():
    class Boom(ConnectionError):
        pass

    received = []
    with pytest.raises(Boom):
        for event in coalesced(provider(["a ", "b "], fail=Boom("reset"))):
            received.append(event)
    assert "".join(texts(received)) == "a b "


def test_a_consumer_that_stops_early_stops_the_reader():
    closed = threading.Event()

    def endless():
        try:
            while True:
                time.sleep(0.005)
                yield StreamDeltaEvent(delta=TextDelta(text="x"))
        finally:
            closed.set()

    stream = coalesced(endless())
    next(stream)
    stream.close()
    assert closed.wait(2), "the reader went on reading after its consumer stopped"
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "lm-stream" and t.is_alive()]


def test_a_sink_drains_what_arrived_with_a_fields_consecutive_tokens_merged():
    sink = StreamSink()
    sink.step("main", "started")
    for chunk in ("Par", "is", " is"):
        sink.token("main", "answer", chunk)
    sink.token("main", "reasoning", "because")
    sink.token("main", "answer", "!")
    sink.put("done", {"id": "x"})
    sink.end()
    items = sink.drain()
    assert items[:-1] == [
        ("step", {"step": "main", "status": "started"}),
        ("token", {"step": "main", "field": "answer", "chunk": "Paris is"}),
        ("token", {"step": "main", "field": "reasoning", "chunk": "because"}),
        ("token", {"step": "main", "field": "answer", "chunk": "!"}),
        ("done", {"id": "x"}),
    ]
    assert sink.drain() == []


def test_the_asgi_relay_writes_what_arrived_in_one_piece(settings):
    settings.DSPEX_STREAM_KEEPALIVE_S = 5

    async def relay() -> list[bytes]:
        sink = StreamSink()
        writes = []
        stream = arelay(sink, "qa", lambda event, data: iter([sse(event, data)]))
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.01)  # the relay waits, attached to this loop
        for chunk in ("a", "b", "c"):
            sink.token("main", "answer", chunk)  # one wake-up of the loop for all three
        sink.put("done", {"id": "x"})
        sink.end()
        writes.append(await first)
        async for part in stream:
            writes.append(part)
        return writes

    writes = asyncio.run(relay())
    assert writes == [
        sse("token", {"step": "main", "field": "answer", "chunk": "abc"}) + sse("done", {"id": "x"})
    ]


def test_a_burst_from_the_provider_reaches_the_client_in_fewer_tokens(post, http_provider):
    """token_delay_ms=0: simlm writes the whole answer at once, so DSPy's listeners get it in a
    few deltas instead of one per word; the answer and the stored execution are the same."""
    http_provider.configure(token_delay_ms=0)
    program = ProgramFactory(name="qa", pipeline=QA)
    question = "Describe " + " ".join(f"river{i}" for i in range(40)) + "?"
    seen = list(
        events(
            post(f"/api/v1/programs/{program.id}/execute/", {"input": {"question": question}, "stream": True})
        )
    )
    assert seen[-1][0] == "done"
    execution = CognitiveExecution.objects.get(id=seen[-1][1]["id"])
    tokens = [data["chunk"] for event, data in seen if event == "token"]
    words = execution.output["answer"].split()
    assert len(words) >= 30 and "".join(tokens).strip() == execution.output["answer"]
    assert len(tokens) < len(words) / 2, tokens


def test_every_stream_of_a_process_runs_on_one_event_loop_thread(post, http_provider):
    import concurrent.futures

    http_provider.configure(token_delay_ms=5)
    program = ProgramFactory(name="qa", pipeline=QA)

    def one(i):
        body = {"input": {"question": f"What is {i} times {i}?"}, "stream": True}
        return list(events(post(f"/api/v1/programs/{program.id}/execute/", body)))[-1][0]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, range(6))) == ["done"] * 6
    loops = [t for t in threading.enumerate() if t.name == "dspex-streams"]
    assert len(loops) == 1 and loops[0].is_alive()
