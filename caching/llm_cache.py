"""The LLM response cache: DSPy's cache interface backed by django-redis, shared by every process.

Key: `llm:{model}:{temperature}:{sha256}` over the canonical request — messages, model, every
sampling and provider parameter DSPy sends — plus the endpoint the model is routed to. DSPy's own
key ignores the endpoint (two servers serving one model name would share answers), and with a
custom engine the request carries no endpoint at all, so we add it here. DSPy puts `rollout_id`
in the request it hands the cache (verified in 3.4.1), so two rollouts never share an entry. The
API key is never part of a key, a value or a log line. The program and its version are not part
of the key: an unchanged prompt from a new program version is the same request and hits.

Values are DSPy's plain-JSON call records, stored as JSON exactly as DSPy built them (never
pickle: a poisoned Redis must not become code execution). What a hit saves (the provider cost the
gateway measured, and the tokens) is kept beside the entry, so a hit reports it. Limits (24 h,
10,000 entries, 1 GB), LRU eviction, stats and fail-open behaviour come from `caching.store`.
"""

import hashlib
import logging
from typing import Any

import dspy
import orjson

from caching.registry import LLM
from caching.store import BoundedCache
from llm import calllog, pricing, routing

logger = logging.getLogger(__name__)

# Never part of a key: secrets and the client-side endpoint spelling (we add the routed endpoint).
IGNORED_KEYS = ("api_key", "api_base", "base_url")
# 1 and 1.0 are the same temperature: numeric sampling settings are keyed as floats.
FLOAT_PARAMS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


def canonical_request(request: dict[str, Any]) -> dict[str, Any]:
    """What a cache key is computed over: the request minus secrets and unset (None) settings,
    plus the endpoint the model is routed to. `rollout_id` and `_fn_identifier` stay in."""
    keyed = {k: v for k, v in request.items() if k not in IGNORED_KEYS and v is not None}
    for name in FLOAT_PARAMS:
        if isinstance(keyed.get(name), int | float) and not isinstance(keyed[name], bool):
            keyed[name] = float(keyed[name])
    keyed["_endpoint"] = _endpoint(request_model(request))
    return keyed


def _endpoint(model: str) -> str:
    try:
        return routing.route_for(model).endpoint
    except routing.UnknownProvider:
        return "unrouted"  # the call itself will be refused; the lookup simply misses


def with_model(request: dict[str, Any], model: str) -> dict[str, Any]:
    """The same request as if it had named `model` (the deployment that answers or answered)."""
    if "model" in request or not isinstance(request.get("request"), dict):
        return {**request, "model": model}
    return {**request, "request": {**request["request"], "model": model}}


def deployments_of(model: str) -> tuple[tuple[str, str], ...]:
    """The (deployment, provider) pairs whose entries may answer a call to `model`: the model
    itself, or every deployment of an alias (the alias declares them interchangeable)."""
    try:
        target = routing.plan_for(model).targets[0]
    except (routing.UnknownProvider, ValueError):
        return ((model, ""),)
    return tuple((d.route.model, d.route.provider) for d in target.deployments)


def request_model(request: dict[str, Any]) -> str:
    """The model of a DSPy cache request (top level, or inside a native `request`)."""
    inner = request.get("request")
    return str(request.get("model") or (inner.get("model") if isinstance(inner, dict) else "") or "")


def _temperature(request: dict[str, Any]) -> Any:
    if "temperature" in request:
        return request["temperature"]
    inner = request.get("request")
    config = inner.get("config") if isinstance(inner, dict) else None
    return config.get("temperature") if isinstance(config, dict) else None


class LLMCache(dspy.clients.Cache):
    """DSPy cache whose only tier is the shared, bounded `llm` cache (Redis in production)."""

    def __init__(self, store: BoundedCache = LLM):
        super().__init__(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir=None)
        self.store = store

    def key_for(self, request: dict[str, Any], ignored: list[str] | None = None) -> str:
        keyed = canonical_request({k: v for k, v in request.items() if k not in (ignored or ())})
        digest = hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()
        temperature = _temperature(request)
        temperature = "default" if temperature is None else float(temperature)
        return f"llm:{request_model(request)}:{temperature}:{digest}"

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        """An entry of the deployment that would answer: for a plain model its own, for an alias
        any of its deployments' (the trace names the one whose entry answered)."""
        model = request_model(request)
        for deployment, provider in deployments_of(model):
            keyed = request if deployment == model else with_model(request, deployment)
            try:
                key = self.key_for(keyed, ignored_args_for_cache_key)
            except Exception:  # an unhashable request is simply not cached
                logger.warning("LLM request cannot be keyed; not cached")
                return None
            hit = self.store.get(key)
            if hit is None:
                continue
            log = calllog.current_call()
            if log is not None and isinstance(hit.value, dict):
                log.cached_usage = {**(hit.value.get("usage") or {}), "cost_usd": hit.cost_usd}
                log.deployment, log.provider = deployment, provider or None
            return hit.value
        return None

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        # The model that produced the answer: a fallback's or an alias deployment's answer is
        # stored under that model, so the primary never gets a fallback's answer silently.
        answer = calllog.take_answer()
        if not isinstance(value, dict):
            # Only DSPy's JSON records are cached; an SDK object would need pickle.
            return
        model = request_model(request)
        if answer is not None and answer[0] != model:
            request, model = with_model(request, answer[0]), answer[0]
        try:
            key = self.key_for(request, ignored_args_for_cache_key)
        except Exception:
            return
        usage = value.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        self.store.set(key, value, cost_usd=_cost_of(model, usage), tokens=tokens)


def _cost_of(model: str, usage: dict) -> float | None:
    """What the provider charged for this record: the gateway's own accounting of the calls that
    produced it, or, outside a traced call, the model's price applied to the usage."""
    log = calllog.current_call()
    if log is not None and log.calls:
        costs = [call.cost_usd for call in log.calls]
        known = [cost for cost in costs if cost is not None]
        return sum(known) if len(known) == len(costs) else None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return pricing.cost_for_tokens(model, prompt, completion)


def install_llm_cache() -> None:
    """Make our cache DSPy's process-wide cache (dspy.cache is replaceable by assignment)."""
    # Read the module dict, not `dspy.cache`: that attribute lazily builds DSPy's default
    # disk cache under ~/.dspy_cache, which a server must never touch.
    with dspy._cache_lock:
        if not isinstance(vars(dspy).get("cache"), LLMCache):
            dspy.cache = LLMCache()
