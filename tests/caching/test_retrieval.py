"""Retrieval over a stored corpus: indexing, recall on the bundled handbook, Retrieve steps,
the warmer, and embedding on the embeddings queue by a real worker."""

import time

import pytest
from django.core.management import call_command

from caching.tasks import embed_corpus, warm_embeddings
from programs.models import Corpus, Document
from programs.retrieval import corpora_needing_embeddings, retrieve, search
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
    pipeline = {
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
    program = make_program(name="handbook-qa", pipeline=pipeline)
    body = api.post(
        f"/api/v1/programs/{program.id}/execute/",
        {"input": {"question": "Who founded Acme Tasks?"}, "wait": True},
        format="json",
    ).json()
    assert body["status"] == "succeeded", body
    step = next(e for e in body["trace"] if e["kind"] == "module" and e["step"] == "retrieve")
    assert len(step["outputs"]["passages"]) == 2 and "Maria Lopez" in step["outputs"]["passages"][0]


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
