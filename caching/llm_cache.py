"""The LLM response cache: DSPy's cache interface backed by django-redis, shared by every process.

Key: `llm:{model}:{temperature}:{sha256}` over the canonical request — messages, model, every
sampling and provider parameter DSPy sends — plus the endpoint the model is routed to. DSPy's own
key ignores the endpoint (two servers serving one model name would share answers), and with a
custom engine the request carries no endpoint at all, so we add it here. The API key is never
part of a key, a value or a log line.

Values are DSPy's plain-JSON call records, stored with a JSON serializer (never pickle: a
poisoned Redis must not become code execution). Redis trouble never fails a call: get/put fail
open after a bounded socket timeout and the error is counted.
"""

import logging
from typing import Any

import dspy
from django.conf import settings
from django.core.cache import caches

from llm import gateway
from monitoring import telemetry

logger = logging.getLogger(__name__)

# Never part of a key: secrets and the client-side endpoint spelling (we add the routed endpoint).
IGNORED_KEYS = ("api_key", "api_base", "base_url")


class LLMCache(dspy.clients.Cache):
    """DSPy cache whose only tier is the shared Django `llm` cache (Redis in production)."""

    def __init__(self, alias: str = "llm", ttl_s: int | None = None):
        super().__init__(enable_disk_cache=False, enable_memory_cache=False, disk_cache_dir=None)
        self.alias = alias
        self.ttl_s = ttl_s if ttl_s is not None else settings.DSPEX_LLM_CACHE_TTL_S

    @property
    def backend(self) -> Any:
        return caches[self.alias]

    def key_for(self, request: dict[str, Any], ignored: list[str] | None = None) -> str:
        model = str(request.get("model", ""))
        keyed = {k: v for k, v in request.items() if k not in IGNORED_KEYS}
        keyed["_endpoint"] = gateway.route_for(model).endpoint
        digest = self.cache_key(keyed, list(ignored or []))
        return f"llm:{model}:{request.get('temperature')}:{digest}"

    def get(self, request: dict[str, Any], ignored_args_for_cache_key: list[str] | None = None) -> Any:
        meta = {"cache": "llm", "model": str(request.get("model", ""))}
        try:
            key = self.key_for(request, ignored_args_for_cache_key)
            value = self.backend.get(key)
        except Exception as exc:
            self._count_error("get", exc)
            return None
        if value is None:
            telemetry.emit("cache.miss", {}, meta)
            return None
        telemetry.emit("cache.hit", {}, meta)
        log = gateway.current_call()
        if log is not None and isinstance(value, dict):
            log.cached_usage = value.get("usage") or {}
        return value

    def put(
        self,
        request: dict[str, Any],
        value: Any,
        ignored_args_for_cache_key: list[str] | None = None,
        enable_memory_cache: bool = True,
    ) -> None:
        if not isinstance(value, dict):
            # Only DSPy's JSON records are cached; an SDK object would need pickle.
            return
        try:
            self.backend.set(self.key_for(request, ignored_args_for_cache_key), value, timeout=self.ttl_s)
        except Exception as exc:
            self._count_error("put", exc)

    @staticmethod
    def _count_error(op: str, exc: Exception) -> None:
        telemetry.emit("cache.error", {}, {"cache": "llm", "op": op})
        logger.warning("LLM cache %s failed, continuing without cache: %s", op, type(exc).__name__)


def install_llm_cache() -> None:
    """Make our cache DSPy's process-wide cache (dspy.cache is replaceable by assignment)."""
    # Read the module dict, not `dspy.cache`: that attribute lazily builds DSPy's default
    # disk cache under ~/.dspy_cache, which a server must never touch.
    with dspy._cache_lock:
        if not isinstance(vars(dspy).get("cache"), LLMCache):
            dspy.cache = LLMCache()
