"""The provider registry from settings: entries checked with their path, keys never in settings."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from llm import routing


@pytest.fixture
def registry(settings):
    def configure(providers: dict) -> dict[str, routing.Provider]:
        settings.DSPEX_PROVIDERS = providers
        routing.reset_registry()
        return routing.providers()

    yield configure
    routing.reset_registry()


def test_the_single_endpoint_settings_are_the_default_provider(registry, settings):
    settings.DSPEX_LM_API_BASE = "http://127.0.0.1:9/v1/"
    settings.DSPEX_LM_API_KEY = "sk-default"
    default = registry({})[routing.DEFAULT_PROVIDER]
    assert (default.kind, default.endpoint, default.lm15_key) == (
        "openai",
        "http://127.0.0.1:9/v1",
        "openai-chat",
    )
    assert default.api_key() == "sk-default" and default.key_source == "setting:DSPEX_LM_API_KEY"
    assert registry({})[routing.SIM_PROVIDER].in_process


def test_each_provider_reads_its_own_key_from_its_own_source(registry, monkeypatch, tmp_path):
    monkeypatch.setenv("VENDOR_A_KEY", "key-a")
    key_file = tmp_path / "b.key"
    key_file.write_text("key-b\n")
    found = registry(
        {
            "a": {"kind": "openai", "api_base": "http://127.0.0.1:1/v1", "api_key_env": "VENDOR_A_KEY"},
            "b": {"kind": "anthropic", "api_base": "http://127.0.0.1:2", "api_key_file": str(key_file)},
            "selfhosted": {"api_base": "http://127.0.0.1:3/v1", "timeout_s": 5, "limits": {"rpm": 60}},
        }
    )
    assert found["a"].api_key() == "key-a" and found["a"].key_source == "env:VENDOR_A_KEY"
    assert found["b"].api_key() == "key-b" and found["b"].lm15_key == "anthropic"
    assert found["selfhosted"].api_key() is None and found["selfhosted"].key_source == "none"
    assert (found["selfhosted"].timeout_s, dict(found["selfhosted"].limits)) == (5.0, {"rpm": 60})
    # The key is read from its source, never kept on the (printable) provider.
    assert "key-a" not in repr(found["a"]) and "key-b" not in repr(found["b"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"api_key": "sk-secret"}, "DSPEX_PROVIDERS.p.api_key: keys never go in settings"),
        ({"kind": "cohere"}, "DSPEX_PROVIDERS.p.kind: 'cohere' is not one of"),
        ({"timeout_s": 0}, "DSPEX_PROVIDERS.p.timeout_s must be a positive number"),
        ({"timeout_s": "5"}, "DSPEX_PROVIDERS.p.timeout_s must be a positive number"),
        ({"api_key_env": "A", "api_key_file": "/b"}, "give api_key_env or api_key_file, not both"),
        ({"endpoint": "http://x"}, "DSPEX_PROVIDERS.p: unknown field 'endpoint'"),
        ({"limits": [1]}, "DSPEX_PROVIDERS.p.limits must be a JSON object"),
        ("http://x", "DSPEX_PROVIDERS.p must be a JSON object"),
    ],
)
def test_a_bad_entry_refuses_with_its_path(registry, entry, message):
    with pytest.raises(ImproperlyConfigured, match=message.replace(".", r"\.").replace("(", r"\(")):
        registry({"p": entry})


def test_an_unreadable_key_file_names_the_provider(registry, tmp_path):
    found = registry({"p": {"api_key_file": str(tmp_path / "missing")}})
    with pytest.raises(ImproperlyConfigured, match=r"DSPEX_PROVIDERS\.p\.api_key_file"):
        found["p"].api_key()


@pytest.mark.parametrize(
    ("raw", "message"), [("{oops", "must be a JSON object: "), ("[1]", "must be a JSON object, not list")]
)
def test_the_registry_settings_must_be_json_objects(monkeypatch, raw, message):
    from dspex_site.env import env_json

    monkeypatch.setenv("DSPEX_PROVIDERS", raw)
    with pytest.raises(ImproperlyConfigured, match=f"DSPEX_PROVIDERS {message}"):
        env_json("DSPEX_PROVIDERS", {})
