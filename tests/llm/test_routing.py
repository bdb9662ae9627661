"""Routing through the registry: routes, deployment plans, fallbacks and their settings, checked
with their paths; the gateway's choice of deployment and fallback with in-process engines."""

import collections
import re

import pytest
from django.core.exceptions import ImproperlyConfigured
from dspy import lm15

from caching.llm_cache import LLMCache
from llm import calllog, gateway, resilience, routing
from llm.routing import route_for
from monitoring import telemetry

pytestmark = pytest.mark.django_db  # budgets read their limits from the database

PROVIDERS = {
    "a": {"kind": "openai", "api_base": "http://127.0.0.1:1/v1", "api_key_env": "A_KEY"},
    "b": {"kind": "anthropic", "api_base": "http://127.0.0.1:2", "api_key_env": "B_KEY", "timeout_s": 7},
}


@pytest.fixture(autouse=True)
def _registry(settings):
    settings.DSPEX_PROVIDERS = PROVIDERS
    settings.DSPEX_MODEL_DEPLOYMENTS = {}
    settings.DSPEX_MODEL_FALLBACKS = {}
    gateway.reset()
    yield
    gateway.reset()


def test_a_model_goes_to_its_provider_as_the_model_after_the_prefix():
    a, b = route_for("a/gpt-4o-mini"), route_for("b/claude-3-5-haiku-latest")
    assert (a.provider, a.endpoint, a.lm15_model, a.wire_model) == (
        "a",
        "http://127.0.0.1:1/v1",
        "openai-chat:gpt-4o-mini",
        "gpt-4o-mini",
    )
    assert (b.provider, b.endpoint, b.lm15_provider, b.lm15_model) == (
        "b",
        "http://127.0.0.1:2",
        "anthropic",
        "anthropic:claude-3-5-haiku-latest",
    )
    # The provider's timeout is its call timeout (admission leases, the engine's read timeout).
    assert resilience.policy_for("b").call_timeout_s == 7.0


def test_the_default_setup_keeps_working_and_an_unregistered_prefix_is_refused(settings):
    settings.DSPEX_LM_API_BASE = "http://127.0.0.1:9/v1"
    default = route_for("openai/sim-default")
    assert (default.provider, default.endpoint) == ("openai", "http://127.0.0.1:9/v1")
    assert route_for("gpt-4o-mini").provider == "openai"  # no prefix: the default provider
    assert route_for("sim/default").lm15_provider is None
    with pytest.raises(routing.UnknownProvider, match=r"model 'groq/llama': unknown provider 'groq'"):
        route_for("groq/llama")


def test_each_provider_gets_an_engine_with_its_own_key_and_base_url_only(monkeypatch):
    monkeypatch.setenv("A_KEY", "key-a")
    monkeypatch.setenv("B_KEY", "key-b")
    gateway.reset()
    a, b = gateway._provider_engine("a"), gateway._provider_engine("b")
    assert a is not b
    assert (a.config.api_keys, a.config.base_urls) == (
        {"openai-chat": "key-a"},
        {"openai-chat": "http://127.0.0.1:1/v1"},
    )
    assert (b.config.api_keys, b.config.base_urls) == (
        {"anthropic": "key-b"},
        {"anthropic": "http://127.0.0.1:2"},
    )
    assert a.config.env == {} and b.config.env == {}


def test_provider_engines_read_the_proxy_environment_once_per_process(monkeypatch):
    """No proxy variables at start: lm15 connects directly and never reads the environment per
    request; with one set, lm15 keeps its own per-request proxy handling (NO_PROXY included)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    gateway.reset()
    direct = gateway._provider_engine("a").config.transport
    assert direct._trust_env is False
    assert direct._read_timeout == resilience.policy_for("a").call_timeout_s
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert gateway._provider_engine("a").config.transport is direct  # read once per process
    gateway.reset()
    assert gateway._provider_engine("a").config.transport._trust_env is True
    gateway.reset()


def test_provider_connections_per_process_follow_the_setting(settings):
    """`DSPEX_LM_MAX_CONNECTIONS` sizes each provider's connection pool (lm15's 100 held too few
    of 500 open streams)."""
    settings.DSPEX_LM_MAX_CONNECTIONS = 600
    gateway.reset()
    assert gateway._provider_engine("a").config.transport.max_connections == 600
    gateway.reset()


@pytest.mark.parametrize(
    ("deployments", "fallbacks", "message"),
    [
        (
            {"fast": {"deployments": [{"model": "a/m"}, {"model": "x/m"}]}},
            {},
            "DSPEX_MODEL_DEPLOYMENTS.fast.deployments[1].model: unknown provider 'x'",
        ),
        ({"fast": {"strategy": "random", "deployments": [{"model": "a/m"}]}}, {}, "fast.strategy: 'random'"),
        ({"fast": {"deployments": []}}, {}, "fast.deployments must be a non-empty list"),
        ({"fast": {"deployments": [{"model": "a/m", "weight": 0}]}}, {}, "deployments[0].weight must be"),
        ({"fast": {"deployments": [{"model": "m"}]}}, {}, "deployments[0].model must be a string"),
        ({}, {"a/m": ["a/n", "y/n"]}, "DSPEX_MODEL_FALLBACKS.a/m[1]: unknown provider 'y'"),
        ({}, {"default": "a/m"}, "DSPEX_MODEL_FALLBACKS.default must be a list of models"),
    ],
)
def test_bad_deployments_or_fallbacks_refuse_at_first_use_naming_the_path(
    settings, deployments, fallbacks, message
):
    settings.DSPEX_MODEL_DEPLOYMENTS = deployments
    settings.DSPEX_MODEL_FALLBACKS = fallbacks
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        routing.plan_for("a/m")


def test_a_plan_lists_the_model_then_its_fallbacks_or_the_default_list(settings):
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {"deployments": [{"model": "a/m", "weight": 3}, {"model": "b/m"}]},
    }
    settings.DSPEX_MODEL_FALLBACKS = {"fast": ["b/big", "fast"], "default": ["a/small"]}
    plan = routing.plan_for("fast")
    assert [t.model for t in plan.targets] == ["fast", "b/big"]
    assert [(d.route.model, d.weight) for d in plan.targets[0].deployments] == [("a/m", 3.0), ("b/m", 1.0)]
    assert not plan.simple
    assert [t.model for t in routing.plan_for("a/other").targets] == ["a/other", "a/small"]
    assert routing.plan_for("a/small").simple
    assert route_for("fast").model == "a/m"  # an alias' route: its first deployment


class FakeEngine:
    """An in-process provider engine: answers, or raises what it is told to, and counts."""

    def __init__(self, name: str, fail: BaseException | None = None):
        self.name, self.fail, self.requests = name, fail, []
        self.only: set[str] | None = None  # fail only requests for these models

    def complete(self, request):
        self.requests.append(request.model)
        if self.fail is not None and (self.only is None or request.model in self.only):
            raise self.fail
        return lm15.Response(
            id="r",
            model=request.model,
            message=lm15.Message.assistant(
                [lm15.TextPart(f"[[ ## answer ## ]]\n{self.name}\n\n[[ ## completed ## ]]")]
            ),
            finish_reason="stop",
            usage=lm15.Usage(input_tokens=10, output_tokens=5, total_tokens=15),
        )


@pytest.fixture
def engines(monkeypatch):
    found: dict[str, FakeEngine] = {"a": FakeEngine("a"), "b": FakeEngine("b")}

    def engine_of(name: str) -> FakeEngine:
        return found[name]

    engine_of.cache_clear = lambda: None  # type: ignore[attr-defined]  # gateway.reset() clears it
    monkeypatch.setattr(gateway, "_provider_engine", engine_of)
    return found


@pytest.fixture
def events(monkeypatch):
    seen: list[tuple[str, dict, dict]] = []
    real = telemetry.emit
    monkeypatch.setattr(telemetry, "emit", lambda n, m, meta: (seen.append((n, m, meta)), real(n, m, meta)))
    return seen


def request(model: str = "x") -> lm15.Request:
    return lm15.Request(model=model, messages=(lm15.Message.user("hi"),))


def test_weighted_deployments_spread_calls_by_weight(settings, engines):
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {"deployments": [{"model": "a/m", "weight": 3}, {"model": "b/m"}]}
    }
    engine = gateway.GatewayEngine("fast")
    for _ in range(400):
        engine.complete(request())
    counts = collections.Counter({name: len(e.requests) for name, e in engines.items()})
    assert counts["a"] + counts["b"] == 400
    assert 260 <= counts["a"] <= 340, counts  # 300 expected; 3:1 within a wide tolerance
    assert engines["a"].requests[0] == "openai-chat:m" and engines["b"].requests[0] == "anthropic:m"


def test_a_transient_failure_falls_back_within_the_call_and_is_logged_with_its_reason(
    settings, engines, events
):
    engines["a"].fail = lm15.ServerError("boom", status=503)
    settings.DSPEX_MODEL_FALLBACKS = {"a/m": ["b/m"]}
    settings.DSPEX_PRICES = {
        "a/m": {"prompt": 1000, "completion": 1000},
        "b/m": {"prompt": 2, "completion": 4},
    }
    log = calllog.begin_call()
    try:
        response = gateway.GatewayEngine("a/m").complete(request())
    finally:
        calllog.end_call()
    assert response.model == "anthropic:m"
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (1, 1)
    assert log.fallbacks == [{"model": "a/m", "reason": "server_error"}]
    assert (log.deployment, log.provider) == ("b/m", "b")
    assert [(c.model, c.error) for c in log.calls] == [("a/m", "ServerError"), ("b/m", None)]
    assert log.calls[1].cost_usd == pytest.approx((10 * 2 + 5 * 4) / 1_000_000)  # the answering model's price
    assert ("llm.fallback", {}, {"model": "a/m", "fallback": "b/m", "reason": "server_error"}) in events
    tokens = [meta for name, _, meta in events if name == "llm.tokens"]
    assert tokens == [{"provider": "b", "model": "a/m", "deployment": "b/m"}]


def test_a_transient_failure_moves_to_the_models_other_deployment_first(settings, engines, events):
    """Two regions of one model: the one that fails hands the call to the other, once each."""
    engines["a"].fail = lm15.ServerError("region down", status=503)
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {"deployments": [{"model": "a/m", "weight": 1e9}, {"model": "b/m", "weight": 1e-9}]}
    }
    log = calllog.begin_call()
    try:
        response = gateway.GatewayEngine("fast").complete(request())
    finally:
        calllog.end_call()
    assert response.model == "anthropic:m"
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (1, 1)
    assert log.fallbacks == [{"model": "a/m", "reason": "server_error"}] and log.deployment == "b/m"
    assert ("llm.fallback", {}, {"model": "a/m", "fallback": "b/m", "reason": "server_error"}) in events
    engines["b"].fail = lm15.ServerError("both down", status=503)
    with pytest.raises(lm15.ServerError):  # no fallback list: one request per deployment, then the error
        gateway.GatewayEngine("fast").complete(request())
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (2, 2)


def test_a_permanent_error_does_not_fall_back(settings, engines):
    engines["a"].fail = lm15.AuthError("bad key")
    settings.DSPEX_MODEL_FALLBACKS = {"default": ["b/m"]}
    with pytest.raises(lm15.AuthError):
        gateway.GatewayEngine("a/m").complete(request())
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (1, 0)


def test_a_context_window_error_falls_back_only_to_a_larger_window(settings, engines, events):
    engines["a"].fail = lm15.ContextLengthError("maximum context length exceeded")
    engines["a"].only = {"openai-chat:gpt-4o-mini", "openai-chat:gpt-4o"}
    # gpt-4o has the same 128k window as gpt-4o-mini: it would refuse the prompt too, so it is
    # skipped without a request; gpt-4.1-mini's is larger.
    settings.DSPEX_MODEL_FALLBACKS = {"a/gpt-4o-mini": ["a/gpt-4o", "a/gpt-4.1-mini"]}
    small, same, large = (route_for(m) for m in ("a/gpt-4o-mini", "a/gpt-4o", "a/gpt-4.1-mini"))
    assert routing.context_window(small) == routing.context_window(same) < routing.context_window(large)
    log = calllog.begin_call()
    try:
        gateway.GatewayEngine("a/gpt-4o-mini").complete(request())
    finally:
        calllog.end_call()
    assert engines["a"].requests == ["openai-chat:gpt-4o-mini", "openai-chat:gpt-4.1-mini"]
    assert log.fallbacks == [{"model": "a/gpt-4o-mini", "reason": "context_window"}]
    assert log.deployment == "a/gpt-4.1-mini"
    fallbacks = [meta for name, _, meta in events if name == "llm.fallback"]
    assert fallbacks == [{"model": "a/gpt-4o-mini", "fallback": "a/gpt-4.1-mini", "reason": "context_window"}]


def test_a_timeout_or_refused_connection_falls_back_with_its_reason(settings, engines):
    settings.DSPEX_MODEL_FALLBACKS = {"default": ["b/m"]}
    for error, reason in (
        (lm15.TimeoutError("read timed out"), "timeout"),
        (ConnectionRefusedError(), "connection_error"),
    ):
        engines["a"].fail = error
        log = calllog.begin_call()
        try:
            gateway.GatewayEngine("a/m").complete(request())
        finally:
            calllog.end_call()
        assert log.fallbacks == [{"model": "a/m", "reason": reason}]


def test_a_deployment_whose_breaker_is_open_is_skipped_without_a_request(settings, engines):
    settings.DSPEX_PROVIDERS = {**PROVIDERS, "a": {**PROVIDERS["a"], "limits": {"failure_threshold": 1}}}
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "fast": {"deployments": [{"model": "a/m", "weight": 1e9}, {"model": "b/m", "weight": 1e-9}]}
    }
    name = resilience.endpoint_name("a", route_for("a/m").endpoint)
    resilience.admit("a", route_for("a/m").endpoint).finish(failure="server_error: down")
    assert resilience.status(name)["state"] == "open"
    engine = gateway.GatewayEngine("fast")
    for _ in range(5):
        engine.complete(request())
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (0, 5)


def test_a_fallback_answer_is_cached_under_the_model_that_produced_it():
    cache = LLMCache()
    asked = {"model": "a/m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}
    calllog.note_answer("b/m", "b")
    cache.put(asked, {"choices": ["from b"], "usage": {}})
    assert cache.get(asked) is None  # the primary never gets the fallback's answer
    assert cache.get({**asked, "model": "b/m"}) == {"choices": ["from b"], "usage": {}}


def test_an_alias_is_answered_by_an_entry_of_any_of_its_deployments_and_says_which(settings):
    settings.DSPEX_MODEL_DEPLOYMENTS = {"fast": {"deployments": [{"model": "a/m"}, {"model": "b/m"}]}}
    cache = LLMCache()
    asked = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    calllog.note_answer("b/m", "b")
    cache.put(asked, {"choices": ["from b"], "usage": {}})
    log = calllog.begin_call()
    try:
        assert cache.get(asked) == {"choices": ["from b"], "usage": {}}
    finally:
        calllog.end_call()
    assert (log.deployment, log.provider) == ("b/m", "b")
    # Never the key: entries of two providers with different keys are the same key.
    assert "key" not in cache.key_for({**asked, "model": "b/m", "api_key": "sk-secret"})


def test_the_system_check_reports_bad_routing_settings_with_their_path(settings):
    assert routing.check_settings() == []
    settings.DSPEX_MODEL_DEPLOYMENTS = {"fast": {"deployments": [{"model": "a/m"}, {"model": "x/m"}]}}
    [error] = routing.check_settings()
    assert (error.id, error.msg) == (
        "llm.E001",
        "DSPEX_MODEL_DEPLOYMENTS.fast.deployments[1].model: unknown provider 'x'",
    )


def test_a_model_of_an_unregistered_provider_fails_its_run_naming_the_provider(api, make_program):
    program = make_program(pipeline={"lm": {"model": "nope/m"}, "signature": "question -> answer"})
    response = api.post(
        f"/api/v1/programs/{program.id}/execute/", {"input": {"question": "x"}, "wait": True}, format="json"
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "unknown_provider"
    assert error["message"].startswith(
        "model 'nope/m': unknown provider 'nope' (registered: a, b, openai, sim"
    )


def test_least_busy_picks_the_deployment_with_fewest_calls_in_flight_across_processes(settings, engines):
    settings.DSPEX_MODEL_DEPLOYMENTS = {
        "busy": {
            "strategy": "least-busy",
            "deployments": [{"model": "a/m", "weight": 1e6}, {"model": "b/m", "weight": 1}],
        }
    }
    engine = gateway.GatewayEngine("busy")
    engine.complete(request())
    assert len(engines["a"].requests) == 1  # idle: the weight decides
    # Two calls in flight on a (leases in Redis, as another process's would be), none on b.
    held = [resilience.admit("a", route_for("a/m").endpoint, track=True) for _ in range(2)]
    try:
        for _ in range(3):
            engine.complete(request())
    finally:
        for ticket in held:
            ticket.finish(failure=None)
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (1, 3)


def test_a_rate_limit_beyond_its_wait_or_a_providers_429_falls_back(settings, engines):
    limits = {"rpm": 1, "max_wait_s": 0.05}
    settings.DSPEX_PROVIDERS = {**PROVIDERS, "a": {**PROVIDERS["a"], "limits": limits}}
    settings.DSPEX_MODEL_FALLBACKS = {"a/m": ["b/m"]}
    engine = gateway.GatewayEngine("a/m")
    engine.complete(request())  # takes a's one request of this minute
    for error in (None, lm15.RateLimitError("slow down", retry_after=30)):
        if error is not None:  # a's bucket refilled by hand: now the provider itself says 429
            resilience.clear(resilience.endpoint_name("a", route_for("a/m").endpoint))
            engines["a"].fail = error
        log = calllog.begin_call()
        try:
            engine.complete(request())
        finally:
            calllog.end_call()
        assert log.fallbacks == [{"model": "a/m", "reason": "rate_limited"}]
        assert log.deployment == "b/m"
    # The admission refusal sent nothing; the provider's 429 was one request.
    assert (len(engines["a"].requests), len(engines["b"].requests)) == (2, 2)
