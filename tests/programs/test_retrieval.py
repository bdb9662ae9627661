"""Retrieval over a stored corpus: indexing, recall on the bundled handbook, Retrieve steps
(their embedding calls go through the gateway: budget, cost, trace), the warmer, and embedding
on the embeddings queue by a real worker."""

import json
import time
from collections.abc import Iterator

import pytest
from django.core.management import call_command

from caching import store
from llm import budgets, gateway, resilience
from programs import retrieval
from programs.models import Corpus, Document
from programs.retrieval import corpora_needing_embeddings, retrieve, search
from programs.tasks import embed_corpus, warm_embeddings
from tests.support import ROOT, start_worker

HANDBOOK = ROOT / "programs" / "demo" / "handbook.jsonl"
QUESTIONS = {
    "How long do I have to ask for a refund?": "refunds",
    "My password reset link expired, how long is it valid?": "password-reset",
    "How much does the Business plan cost per user?": "pricing",
    "Can I export my projects as CSV?": "export",
    "Who founded Acme Tasks?": "office",
    "When does support answer chat and email?": "support-hours",
    "What happens when I exceed the API rate limit?": "api-limits",
    "Is there an Android app?": "mobile",
    "How do I delete my workspace?": "delete-account",
    "Does Acme Tasks connect to Slack?": "integrations",
    "Where can I download invoices as PDF?": "invoices",
    "How do I enable two-factor authentication?": "two-factor",
}


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    store.reset_breakers()
    gateway.reset()
    retrieval._matrices.clear()
    yield
    store.reset_breakers()


@pytest.fixture
def handbook(db):
    call_command("dspex_index_corpus", "handbook", str(HANDBOOK), "--model", "sim/embedding")
    return Corpus.objects.get(name="handbook")


def test_indexing_embeds_every_document_and_reports_progress(handbook):
    assert (handbook.status, handbook.embedded, handbook.total) == ("ready", 12, 12)
    assert not Document.objects.filter(corpus=handbook, embedding__isnull=True).exists()


def test_recall_on_the_bundled_handbook(handbook):
    texts = {doc.text: doc.external_id for doc in handbook.documents.all()}
    found_top1 = found_top3 = 0
    for question, answer in QUESTIONS.items():
        top = [texts[text] for text in retrieve("handbook", question, 3)]
        found_top1 += top[0] == answer
        found_top3 += answer in top
    assert found_top3 / len(QUESTIONS) >= 0.9, found_top3
    assert found_top1 / len(QUESTIONS) >= 0.75, found_top1


def test_scores_are_cosine_similarities_best_first(handbook):
    results = search("handbook", "refund within 30 days", 4)
    scores = [score for _text, score in results]
    assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0 + 1e-6
    assert "Refunds" in results[0][0]


def test_a_retrieve_step_feeds_the_answer_step(api, make_program, handbook):
    program = make_program(name="handbook-qa", pipeline=RETRIEVE_AND_ANSWER)
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "Who founded Acme Tasks?"}, "wait": True},
        format="json",
    ).json()
    assert body["status"] == "succeeded", body
    step = next(e for e in body["trace"] if e["kind"] == "module" and e["step"] == "retrieve")
    assert len(step["outputs"]["passages"]) == 2 and "Maria Lopez" in step["outputs"]["passages"][0]


def test_a_retrieve_step_finds_no_corpus_of_another_project(api, make_program, handbook):
    """Corpus names are site-wide, but a program's Retrieve steps search its project's corpora
    only: another project's corpus "does not exist" for it."""
    from tests.factories import ProjectFactory

    program = make_program(
        name="elsewhere-qa", pipeline=RETRIEVE_AND_ANSWER, project=ProjectFactory(name="b")
    )
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "Who founded Acme Tasks?"}, "wait": True},
        format="json",
    ).json()
    assert body["status"] == "failed", body
    assert "corpus 'handbook' does not exist" in json.dumps(body["error"]), body["error"]


def test_the_warmer_embeds_new_and_changed_documents_only(handbook):
    assert corpora_needing_embeddings() == []
    doc = handbook.documents.get(external_id="pricing")
    doc.text = "Pricing: the Team plan now costs 9 dollars per user per month."
    doc.save()
    Document.objects.create(
        corpus=handbook, external_id="new", text="Webhooks notify your server of changes."
    )
    assert corpora_needing_embeddings() == [handbook.id]
    assert embed_corpus.apply(args=[handbook.id]).get() == 2
    assert corpora_needing_embeddings() == []
    assert "9 dollars" in retrieve("handbook", "How much is the Team plan?", 1)[0]
    assert warm_embeddings.apply().get() == 0


@pytest.mark.slow
def test_documents_posted_to_the_api_are_embedded_on_the_embeddings_queue(api, transactional_db):
    worker = start_worker(queues="embeddings", concurrency=1)
    try:
        corpus = api.post(
            "/api/v1/corpora/", {"name": "faq", "embedding_model": "sim/embedding"}, format="json"
        )
        assert corpus.status_code == 201, corpus.content
        corpus_id = corpus.json()["id"]
        rows = [
            {"id": f"d{i}", "text": f"answer number {i} about shipping to country {i}"} for i in range(100)
        ]
        posted = api.post(f"/api/v1/corpora/{corpus_id}/documents/", {"documents": rows}, format="json")
        assert posted.status_code == 202
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = api.get(f"/api/v1/corpora/{corpus_id}/").json()
            if state["status"] == "ready":
                break
            time.sleep(0.2)
        assert (state["status"], state["embedded"], state["documents"]) == ("ready", 100, 100)
        hits = api.get(f"/api/v1/corpora/{corpus_id}/search/", {"q": "shipping to country 42", "k": 1}).json()
        assert hits["results"][0]["text"] == "answer number 42 about shipping to country 42"
    finally:
        worker.stop()


RETRIEVE_AND_ANSWER = {
    "steps": [
        {
            "name": "retrieve",
            "module": "Retrieve",
            "corpus": "handbook",
            "k": 2,
            "inputs": {"query": "$input.question"},
        },
        {
            "name": "answer",
            "module": "Predict",
            "signature": "context: list[str], question: str -> answer: str",
            "inputs": {"context": "$retrieve.passages", "question": "$input.question"},
        },
    ]
}


@pytest.fixture
def http_handbook(db, http_provider, settings):
    """The handbook embedded by `openai/sim-embedding` over HTTP at the simulated provider, whose
    embeddings cost 2 USD per million tokens; budgets reset."""
    settings.DSPEX_EMBEDDING_API_BASE = http_provider.base_url
    settings.DSPEX_EMBEDDING_API_KEY = "sk-test-not-a-real-key"
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-embedding": {"prompt": 2.0},
        "openai/sim-default": {"prompt": 1.0, "completion": 1.0},
    }
    settings.DSPEX_BUDGETS = {}
    budgets.invalidate()
    resilience._redis.skip_until = 0.0
    call_command("dspex_index_corpus", "handbook", str(HANDBOOK), "--model", "openai/sim-embedding")
    yield Corpus.objects.get(name="handbook")
    budgets.invalidate()


def embedding_requests(server) -> int:
    return server.stats()["endpoints"].get("embeddings", 0)


def test_a_retrieve_step_shows_its_embedding_call_and_pays_for_it(
    api, make_program, http_handbook, http_provider
):
    program = make_program(name="handbook-qa", pipeline=RETRIEVE_AND_ANSWER)
    before = embedding_requests(http_provider)

    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "Who founded Acme Tasks?"}, "wait": True},
        format="json",
    ).json()

    assert body["status"] == "succeeded", body
    assert embedding_requests(http_provider) == before + 1  # the query, once, over HTTP
    [call] = [e for e in body["trace"] if e["kind"] == "embedding"]
    assert (call["step"], call["model"], call["texts"], call["cache_hit"]) == (
        "retrieve",
        "openai/sim-embedding",
        1,
        False,
    )
    assert call["prompt_tokens"] > 0
    assert call["cost_usd"] == pytest.approx(call["prompt_tokens"] * 2.0 / 1e6)
    lm_cost = sum(e["cost_usd"] for e in body["trace"] if e["kind"] == "lm")
    metrics = body["metrics"]
    assert metrics["cost_usd"] == pytest.approx(lm_cost + call["cost_usd"])
    assert (
        metrics["embedding_calls"] == 1
        and metrics["by_model"]["openai/sim-embedding"]["embedding_calls"] == 1
    )

    # The same question again: the query's vector comes from the embedding cache, not the provider.
    again = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "Who founded Acme Tasks?"}, "wait": True, "cache": False},
        format="json",
    ).json()
    assert again["status"] == "succeeded", again
    assert embedding_requests(http_provider) == before + 1
    assert not [e for e in again["trace"] if e["kind"] == "embedding"]


def test_embedding_spend_counts_in_budgets_and_an_exhausted_budget_refuses_before_sending(
    api, make_program, http_handbook, http_provider, settings
):
    program = make_program(name="handbook-qa", pipeline=RETRIEVE_AND_ANSWER)
    spent_before = budgets.spent([budgets.Limit("provider", "openai", "openai", "daily", 1.0)])[0]
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "How long do I have to ask for a refund?"}, "wait": True},
        format="json",
    ).json()
    [call] = [e for e in body["trace"] if e["kind"] == "embedding"]
    spent_after = budgets.spent([budgets.Limit("provider", "openai", "openai", "daily", 1.0)])[0]
    assert spent_after - spent_before == pytest.approx(
        call["cost_usd"] + sum(e["cost_usd"] for e in body["trace"] if e["kind"] == "lm")
    )

    # The provider's budget is used up: the next uncached embedding is refused, never sent.
    settings.DSPEX_BUDGETS = {"providers": {"openai": {"daily": spent_after / 2}}}
    budgets.invalidate()
    before = embedding_requests(http_provider)
    with pytest.raises(budgets.BudgetExceeded):
        retrieve("handbook", "a question nobody asked before", 2)
    assert embedding_requests(http_provider) == before
    # A cached query needs no provider call, so no budget either.
    assert retrieve("handbook", "How long do I have to ask for a refund?", 1)
