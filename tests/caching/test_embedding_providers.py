"""Embedding models of registered providers go to that provider, with that provider's key only."""

import pytest

from caching import embeddings
from llm import gateway
from llm.sim import simulate_embeddings

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_providers(simlm_factory, settings, monkeypatch):
    a, b = simlm_factory(api_key="key-a"), simlm_factory(api_key="key-b")
    monkeypatch.setenv("EMB_KEY_A", "key-a")
    monkeypatch.setenv("EMB_KEY_B", "key-b")
    settings.DSPEX_PROVIDERS = {
        "vendora": {"kind": "openai", "api_base": a.base_url, "api_key_env": "EMB_KEY_A"},
        "vendorb": {"kind": "openai", "api_base": b.base_url, "api_key_env": "EMB_KEY_B"},
    }
    # The single-endpoint embedding settings point elsewhere: they must not be used.
    settings.DSPEX_EMBEDDING_API_BASE = "http://127.0.0.1:9/v1"
    settings.DSPEX_EMBEDDING_API_KEY = "sk-wrong-for-both"
    gateway.reset()
    yield a, b
    gateway.reset()


def embedding_requests(server) -> int:
    return int(server.stats()["endpoints"].get("embeddings", 0))


def test_each_provider_gets_its_embedding_calls_with_its_own_key(two_providers):
    a, b = two_providers
    [vector] = embeddings.embed(["refund my invoice"], "vendorb/sim-embedding")
    assert vector == embeddings.as_float32(simulate_embeddings("sim-embedding", ["refund my invoice"])[0])
    assert (embedding_requests(a), embedding_requests(b)) == (0, 1)
    embeddings.embed(["where is my parcel"], "vendora/sim-embedding")
    assert (embedding_requests(a), embedding_requests(b)) == (1, 1)
    assert b.requests("unauthorized") == 0 and a.requests("unauthorized") == 0


def test_the_cache_key_names_the_providers_endpoint_never_its_key(two_providers):
    key_a = embeddings.key_for("vendora/sim-embedding", "hello")
    key_b = embeddings.key_for("vendorb/sim-embedding", "hello")
    assert key_a != key_b and "key-a" not in key_a and "key-b" not in key_b


def test_a_provider_with_the_wrong_key_is_refused_by_it(two_providers, monkeypatch):
    a, _ = two_providers
    monkeypatch.setenv("EMB_KEY_A", "key-b")  # vendor a's variable now holds b's key
    gateway.reset()
    with pytest.raises(Exception, match=r"(?i)401|auth|key"):
        embeddings.embed(["a text never embedded"], "vendora/sim-embedding")
    assert a.requests("unauthorized") == 1
