"""The simulated provider in-process: real DSPy modules and adapters over `SimEngine`.

No database, no network: these run the prompts DSPy 3.4.1 really builds through the simulator.
"""

import asyncio
import enum
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import

import dspy
import pydantic
import pytest

from llm.sim import (
    AsyncSimEngine,
    SimEngine,
    count_tokens,
    safe_eval,
    sim_lm,
    simulate_chat,
    simulate_embeddings,
)

DEMO_DIR = Path(__file__).resolve().parents[2] / "programs" / "demo"
CATEGORIES = ("billing", "bug", "feature_request", "account")


class Ticket(dspy.Signature):
    """Classify the support ticket."""

    ticket: str = dspy.InputField()
    category: Literal["billing", "bug", "feature_request", "account"] = dspy.OutputField()


class Typed(dspy.Signature):
    """Answer with every type."""

    question: str = dspy.InputField()
    category: Literal["billing", "bug"] = dspy.OutputField()
    count: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    urgent: bool = dspy.OutputField()


class Recording:
    """A SimEngine that keeps the requests DSPy sends, to check what reached the provider."""

    def __init__(self, **kwargs: Any):
        self.inner = SimEngine(**kwargs)
        self.requests: list = []
        self.supports_response_schema = self.inner.supports_response_schema
        self.supported_params = self.inner.supported_params

    def complete(self, request: Any) -> Any:
        self.requests.append(request)
        return self.inner.complete(request)

    def stream(self, request: Any) -> Any:
        return self.inner.stream(request)

    def close(self) -> None:
        pass


def make_lm(engine: Any = None, **kwargs: Any) -> dspy.LM:
    return dspy.LM("sim/default", engine=engine or SimEngine(), num_retries=0, cache=False, **kwargs)


def rows(name: str) -> list[dict]:
    with open(DEMO_DIR / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def examples(data: list[dict]) -> list[dspy.Example]:
    return [dspy.Example(**r["input"], **r["output"]) for r in data]


def accuracy(program: dspy.Module, data: list[dict], field: str) -> float:
    with dspy.context(lm=make_lm()):
        hits = sum(program(**r["input"])[field] == r["output"][field] for r in data)
    return hits / len(data)


# -- DSPy modules, adapters and types -----------------------------------------------------------


@pytest.mark.parametrize(
    "adapter", [dspy.ChatAdapter(), dspy.JSONAdapter(), dspy.XMLAdapter()], ids=["chat", "json", "xml"]
)
@pytest.mark.parametrize("module", [dspy.Predict, dspy.ChainOfThought])
def test_every_output_field_in_its_type(adapter: dspy.Adapter, module: type) -> None:
    engine = Recording()
    with dspy.context(lm=make_lm(engine), adapter=adapter):
        pred = module(Typed)(question="The invoice total is 12 * (3 + 4) dollars, is that urgent?")
    assert len(engine.requests) == 1  # parsed at the first attempt, no adapter fallback
    assert pred.category in ("billing", "bug")
    assert pred.count == 84  # evaluated from the arithmetic in the input
    assert pred.ratio == 84.0
    assert isinstance(pred.tags, list) and pred.tags and all(isinstance(t, str) for t in pred.tags)
    assert pred.urgent is True  # the field name appears in the input
    if module is dspy.ChainOfThought:
        assert isinstance(pred.reasoning, str) and "84" in pred.reasoning


@pytest.mark.parametrize(
    ("structured_output", "expected"),
    [("json_schema", "json_schema"), ("json_object", "json_object"), ("none", None)],
)
def test_json_adapter_with_each_response_format(structured_output: str, expected: str | None) -> None:
    engine = Recording(structured_output=structured_output)
    with dspy.context(lm=make_lm(engine), adapter=dspy.JSONAdapter()):
        pred = dspy.Predict(Typed)(question="Billing: the invoice shows 7 / 2 seats and a refund")
    fmt = engine.requests[-1].config.response_format
    assert (fmt or {}).get("type") == expected
    if expected == "json_schema":
        assert fmt["schema"]["properties"]["category"]["enum"] == ["billing", "bug"]  # lm15 keeps it flat
    assert pred.category == "billing"  # the label's name is in the input
    assert pred.count == 4 and pred.ratio == 3.5
    assert len(engine.requests) == 1  # parsed at the first attempt


def test_dict_pydantic_and_enum_outputs() -> None:
    class Person(pydantic.BaseModel):
        name: str
        age: int
        tags: list[str]

    class Mood(enum.Enum):
        HAPPY = "happy"
        SAD = "sad"

    class Extract(dspy.Signature):
        """Extract structured data."""

        text: str = dspy.InputField()
        person: Person = dspy.OutputField()
        mood: Mood = dspy.OutputField()
        extra: dict[str, Any] = dspy.OutputField()

    for adapter in (dspy.ChatAdapter(), dspy.JSONAdapter()):
        with dspy.context(lm=make_lm(), adapter=adapter):
            pred = dspy.Predict(Extract)(text="Ana is 31 and feels happy today")
        assert isinstance(pred.person, Person) and pred.person.age == 31 and pred.person.name == "Ana"
        assert pred.mood is Mood.HAPPY
        assert isinstance(pred.extra, dict) and pred.extra


def test_async_engine_with_acall() -> None:
    lm = dspy.LM("sim/default", engine=SimEngine(), async_engine=AsyncSimEngine(), num_retries=0, cache=False)

    async def run() -> list:
        with dspy.context(lm=lm):
            program = dspy.Predict(Ticket)
            return await asyncio.gather(
                *(program.acall(ticket=f"Crash number {i}, found a bug") for i in range(5))
            )

    assert [p.category for p in asyncio.run(run())] == ["bug"] * 5


def test_streaming_emits_field_chunks() -> None:
    lm = dspy.LM("sim/default", engine=SimEngine(), async_engine=AsyncSimEngine(), num_retries=0, cache=False)
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener])

    async def run() -> list:
        with dspy.context(lm=lm):
            return [chunk async for chunk in program(question="What is 2 + 40?")]

    chunks = asyncio.run(run())
    streamed = "".join(c.chunk for c in chunks if isinstance(c, dspy.streaming.StreamResponse))
    assert streamed.strip() == "42" and chunks[-1].answer == "42"


def test_react_calls_a_tool_and_finishes() -> None:
    calls = []

    def lookup_order(order_id: str) -> str:
        """Look up an order's delivery status by its id."""
        calls.append(order_id)
        return "Order 1234 was delivered on Monday to Berlin."

    agent = dspy.ReAct("question -> answer", tools=[lookup_order], max_iters=4)
    with dspy.context(lm=make_lm()):
        pred = agent(question="Where was order 1234 delivered?")
    assert calls == ["Where was order 1234 delivered?"]
    assert pred.trajectory["tool_name_1"] == "finish"
    assert "Berlin" in pred.answer


def test_sim_lm_helper_and_usage_in_history() -> None:
    lm = sim_lm(cache=False)
    with dspy.context(lm=lm):
        dspy.Predict("question -> answer")(question="What is the capital of France?")
    entry = lm.history[-1]
    prompt_chars = sum(len(m["content"]) for m in entry["messages"])
    assert entry["usage"]["prompt_tokens"] >= prompt_chars // 4
    assert entry["usage"]["completion_tokens"] == count_tokens(entry["outputs"][0])
    assert (
        entry["usage"]["total_tokens"]
        == entry["usage"]["prompt_tokens"] + entry["usage"]["completion_tokens"]
    )


def test_engine_state_round_trip() -> None:
    lm = dspy.LM("sim/default", engine=SimEngine(structured_output="json_object"), cache=False)
    state = lm.dump_state()
    restored = dspy.LM.load_state(state, allow_custom_lm_class=True)
    assert isinstance(restored.engine, SimEngine) and restored.engine.structured_output == "json_object"


# -- Determinism --------------------------------------------------------------------------------


def test_identical_requests_give_identical_replies() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Tell me about refunds"},
    ]
    assert simulate_chat("sim/default", messages) == simulate_chat("sim/default", messages)
    # The model name is normalised: in-process and HTTP spellings share one model.
    assert simulate_chat("sim/default", messages) == simulate_chat("openai/sim-default", messages)
    params = {"temperature": 1.0}
    first = [simulate_chat("sim/default", messages, params, choice=i).content for i in range(3)]
    again = [simulate_chat("sim/default", messages, params, choice=i).content for i in range(3)]
    assert first == again


def test_predictions_are_stable_across_runs() -> None:
    data = rows("tickets.jsonl")[:20]
    program = dspy.Predict(Ticket)
    with dspy.context(lm=make_lm()):
        first = [program(**r["input"]).category for r in data]
        second = [program(**r["input"]).category for r in data]
    assert first == second
    assert set(first) <= set(CATEGORIES)


# -- Answers come from the prompt ---------------------------------------------------------------


def test_demo_with_identical_inputs_is_remembered() -> None:
    program = dspy.Predict(Ticket)
    ticket = "Completely unrelated words here"
    program.demos = [dspy.Example(ticket=ticket, category="account")]
    with dspy.context(lm=make_lm()):
        assert program(ticket=ticket).category == "account"
        assert (
            program(ticket=" Completely  unrelated words here ").category == "account"
        )  # whitespace-insensitive
    qa = dspy.Predict("question -> answer")
    qa.demos = [dspy.Example(question="What is the airspeed of a swallow?", answer="24 mph")]
    with dspy.context(lm=make_lm()):
        assert qa(question="What is the airspeed of a swallow?").answer == "24 mph"


def test_demos_change_the_label() -> None:
    ticket = "The quarterly widget report looks purple"
    program = dspy.Predict(Ticket)
    with dspy.context(lm=make_lm()):
        for label in CATEGORIES:
            program.demos = [dspy.Example(ticket="Purple widget report again", category=label)]
            assert program(ticket=ticket).category == label


def test_few_shot_demos_raise_ticket_accuracy_clearly() -> None:
    data = rows("tickets.jsonl")
    train, test = data[:16], data[16:]
    assert {r["output"]["category"] for r in train} == set(CATEGORIES)
    program = dspy.Predict(Ticket)
    zero_shot = accuracy(program, test, "category")
    program.demos = examples(train)
    few_shot = accuracy(program, test, "category")
    assert 0.25 <= zero_shot <= 0.55
    assert few_shot >= zero_shot + 0.15, (zero_shot, few_shot)


def test_labeled_few_shot_optimizer_improves_the_program() -> None:
    data = examples(rows("tickets.jsonl"))
    trainset = [e.with_inputs("ticket") for e in data[:40]]
    devset = [e.with_inputs("ticket") for e in data[40:]]

    def metric(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> bool:
        return example.category == pred.category

    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=1, display_progress=False)
    with dspy.context(lm=make_lm()):
        baseline = evaluate(dspy.Predict(Ticket)).score
        compiled = dspy.LabeledFewShot(k=24).compile(dspy.Predict(Ticket), trainset=trainset)
        optimized = evaluate(compiled).score
    assert optimized >= baseline + 15, (baseline, optimized)


def test_instructions_associate_words_with_labels() -> None:
    ticket = "The quarterly widget report looks purple"
    with dspy.context(lm=make_lm()):
        for label in CATEGORIES:
            sig = Ticket.with_instructions(
                f"Classify the support ticket.\n{label}: purple widgets, odd colours"
            )
            assert dspy.Predict(sig)(ticket=ticket).category == label


def test_instructions_raise_ticket_accuracy() -> None:
    data = rows("tickets.jsonl")
    guide = Ticket.with_instructions(
        "Classify the support ticket.\n"
        "billing: invoices, refunds, charges, payments, subscriptions, plans, prices, cards\n"
        "bug: crashes, errors, broken pages, failures, freezes, things that stopped working\n"
        "feature_request: ideas, suggestions, wishes, would love, please add, support for\n"
        "account: passwords, logins, sign in, emails, profiles, access, workspace, 2FA"
    )
    assert (
        accuracy(dspy.Predict(guide), data, "category")
        >= accuracy(dspy.Predict(Ticket), data, "category") + 0.25
    )


def test_qa_extracts_from_context_and_demos_shorten_answers() -> None:
    data = rows("qa.jsonl")
    program = dspy.ChainOfThought("context: list[str], question -> answer")
    with dspy.context(lm=make_lm()):
        long_answers = [program(**r["input"]).answer for r in data[4:]]
    # Zero-shot: the best matching context sentence, which contains the answer.
    assert all(
        r["output"]["answer"].lower() in a.lower() for r, a in zip(data[4:], long_answers, strict=True)
    )
    zero_em = accuracy(program, data[4:], "answer")
    program.predict.demos = examples(data[:4])
    few_em = accuracy(program, data[4:], "answer")
    assert zero_em == 0.0 and few_em >= 0.8


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Answer in uppercase.", "THE EIFFEL TOWER WAS COMPLETED IN 1889."),
        ("Answer in lowercase.", "the eiffel tower was completed in 1889."),
        ("Answer with one word.", "1889"),
        ("Be concise.", "1889"),
    ],
)
def test_instructions_change_answer_format(instruction: str, expected: str) -> None:
    sig = dspy.Signature("context: list[str], question -> answer", instruction)
    context = ["The Eiffel Tower was completed in 1889.", "Paris is the capital of France."]
    with dspy.context(lm=make_lm()):
        assert (
            dspy.Predict(sig)(context=context, question="When was the Eiffel Tower completed?").answer
            == expected
        )


def test_plain_chat_prompts() -> None:
    reply = simulate_chat("sim/default", [{"role": "user", "content": "What is 17 times 3?"}])
    assert reply.content == "The result is 51." and reply.finish_reason == "stop"
    reply = simulate_chat(
        "sim/default", [{"role": "user", "content": [{"type": "text", "text": "Tell me about llamas"}]}]
    )
    assert "llamas" in reply.content
    as_json = simulate_chat(
        "sim/x", [{"role": "user", "content": "hi"}], {"response_format": {"type": "json_object"}}
    )
    assert isinstance(json.loads(as_json.content)["response"], str)
    schema = {"type": "object", "properties": {"total": {"type": "integer"}, "ok": {"type": "boolean"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    answer = json.loads(
        simulate_chat("sim/x", [{"role": "user", "content": "2 + 2"}], {"response_format": fmt}).content
    )
    assert answer["total"] == 4 and isinstance(answer["ok"], bool)


def test_usage_and_max_tokens() -> None:
    text = "word " * 400
    reply = simulate_chat("sim/default", [{"role": "user", "content": text}])
    assert reply.prompt_tokens == math.ceil(len(text) / 4) + 4
    assert reply.completion_tokens == count_tokens(reply.content) > 0
    cut = simulate_chat("sim/default", [{"role": "user", "content": text}], {"max_tokens": 5})
    assert cut.finish_reason == "length" and cut.completion_tokens == 5 and len(cut.content) <= 20


# -- Safety and speed ---------------------------------------------------------------------------


def test_safe_eval_refuses_anything_but_arithmetic() -> None:
    assert safe_eval("2 ** 10 - (3 * 4) / 2") == 1018
    for hostile in ("__import__('os').system('true')", "x + 1", "[1] * 3", "9 ** 9 ** 9", "1 / 0", "(" * 300):
        with pytest.raises(ValueError):
            safe_eval(hostile)


def test_short_prompt_is_answered_well_under_a_millisecond() -> None:
    lm = make_lm()
    with dspy.context(lm=lm):
        dspy.Predict(Ticket)(ticket="My card was charged twice")
    messages = lm.history[-1]["messages"]
    simulate_chat("sim/default", messages)
    started = time.perf_counter()
    for i in range(200):
        simulate_chat(
            "sim/default", [*messages[:-1], {"role": "user", "content": f"{messages[-1]['content']} {i}"}]
        )
    assert (time.perf_counter() - started) / 200 < 0.001


# -- Embeddings ---------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_rank_by_word_overlap() -> None:
    docs = [
        "Refunds are issued to the original card within five business days.",
        "Reset your password from the login page.",
        "The mobile app crashes when uploading large images.",
    ]
    queries = ["How long does a refund to my card take?", "I forgot my password", "app crash on image upload"]
    doc_vectors = simulate_embeddings("sim/embedding", docs)
    for expected, vector in enumerate(simulate_embeddings("sim/embedding", queries)):
        scores = [cosine(vector, d) for d in doc_vectors]
        assert scores.index(max(scores)) == expected
    for vector in doc_vectors:
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0)
    assert simulate_embeddings("m", ["same text"]) == simulate_embeddings("m", ["same text"])
    assert len(simulate_embeddings("m", ["x", ""], dim=64)[1]) == 64
    assert cosine(*simulate_embeddings("m", ["refund", "refunds"])) > 0.5
