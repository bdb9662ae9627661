"""The LLM response cache under DSPy: keys, rollouts, versions, bypass, savings, eviction."""

import dspy
import pytest

from caching.llm_cache import LLMCache
from caching.registry import LLM
from llm import gateway

pytestmark = pytest.mark.django_db

PRICES = {"openai/sim-default": {"prompt": 1.0, "completion": 2.0}}


def execute(api, program, body):
    response = api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def lm_entry(body):
    return next(e for e in body["trace"] if e["kind"] == "lm")


def test_dspy_puts_rollout_id_in_the_request_and_two_rollouts_never_share_an_entry(http_provider):
    lm = gateway.lm_for({"model": "openai/sim-default", "temperature": 0.7})
    predict = dspy.Predict("question -> answer")
    before = http_provider.stats()["requests"]
    with dspy.context(lm=lm):
        for rollout in (1, 2, 1, 2):
            predict(question="same question", config={"rollout_id": rollout})
    assert http_provider.stats()["requests"] == before + 2  # one per rollout, then both hit
    assert LLM.stats()["entries"] == 2


def test_the_key_covers_the_endpoint_and_sampling_but_never_the_api_key(settings):
    cache = LLMCache()
    request = {"model": "openai/x", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}
    settings.DSPEX_LM_API_BASE = "http://one.example/v1"
    one = cache.key_for({**request, "api_key": "sk-secret-1"})
    assert one == cache.key_for({**request, "api_key": "sk-secret-2"})
    assert "sk-secret" not in one
    assert one.startswith("llm:openai/x:0.0:")
    assert one == cache.key_for({**request, "temperature": 0})  # 0 and 0.0 are one temperature
    assert one != cache.key_for({**request, "temperature": 0.5})
    assert one != cache.key_for({**request, "top_p": 0.9})
    assert one != cache.key_for({**request, "rollout_id": 1})
    settings.DSPEX_LM_API_BASE = "http://two.example/v1"
    assert one != cache.key_for(request)  # another endpoint serving the same model name


def test_a_hit_reports_what_it_saved_and_the_stats_add_it_up(api, make_program, http_provider, settings):
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, **PRICES}
    program = make_program()
    first = lm_entry(execute(api, program, {"input": {"question": "what is cached?"}, "wait": True}))
    second = lm_entry(execute(api, program, {"input": {"question": "what is cached?"}, "wait": True}))
    assert first["cache_hit"] is False and second["cache_hit"] is True
    assert second["cost_usd"] == 0
    assert second["saved_usage"]["prompt_tokens"] == first["prompt_tokens"]
    stats = api.get("/api/v1/cache/stats/").json()["caches"]
    llm = next(row for row in stats if row["cache"] == "llm")
    assert llm["hits"] >= 1 and llm["misses"] >= 1 and llm["entries"] >= 1
    assert llm["saved_usd"] == pytest.approx(first["cost_usd"])
    assert llm["saved_tokens"] == first["prompt_tokens"] + first["completion_tokens"]


def test_an_unchanged_prompt_from_a_new_program_version_still_hits(api, make_program):
    program = make_program()
    execute(api, program, {"input": {"question": "versions"}, "wait": True})
    program.variables = {"unused": {"type": "int", "default": 1}}
    program.save()
    assert program.version == 2
    body = execute(api, program, {"input": {"question": "versions"}, "wait": True})
    assert body["program_version"] == 2
    assert lm_entry(body)["cache_hit"] is True


def test_a_program_can_bypass_the_cache(api, make_program, http_provider):
    program = make_program()
    execute(api, program, {"input": {"question": "bypass"}, "wait": True})
    response = api.put(f"/api/v1/cache/programs/{program.id}/", {"llm_cache": False}, format="json")
    assert response.json() == {"program": str(program.id), "llm_cache": False}
    before = http_provider.stats()["requests"]
    body = execute(api, program, {"input": {"question": "bypass"}, "wait": True})
    assert lm_entry(body)["cache_hit"] is False
    assert http_provider.stats()["requests"] == before + 1
    api.put(f"/api/v1/cache/programs/{program.id}/", {"llm_cache": True}, format="json")
    assert (
        lm_entry(execute(api, program, {"input": {"question": "bypass"}, "wait": True}))["cache_hit"] is True
    )


def test_executions_keep_the_cache_within_its_entry_limit(api, make_program, settings):
    settings.DSPEX_LLM_CACHE_MAX_ENTRIES = 2
    program = make_program()
    for question in ("one", "two", "three"):
        execute(api, program, {"input": {"question": question}, "wait": True})
    assert LLM.stats()["entries"] == 2
    oldest = execute(api, program, {"input": {"question": "one"}, "wait": True})
    assert lm_entry(oldest)["cache_hit"] is False  # evicted
    newest = execute(api, program, {"input": {"question": "three"}, "wait": True})
    assert lm_entry(newest)["cache_hit"] is True
