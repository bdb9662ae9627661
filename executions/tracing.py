"""TraceRecorder: turns one execution's steps, LM calls and embedding calls into trace entries
(the README's "Executions" describes them; `docs/architecture.md` the data flow).

It is both a DSPy callback (LM call start/end) and the pipeline's step observer. Usage, cost
and provider latency come from the per-call log (`llm.calllog`) rather than DSPy's history lists,
which are disabled during executions. An LM call that reached no provider was a cache hit. The
gateway reports each embedding request (`on_embedding`): an `embedding` entry under its step.
"""

import threading
import time
from collections.abc import Callable
from typing import Any

from dspy.utils.callback import BaseCallback

from dspex_site.jsonable import to_jsonable
from llm import calllog, pricing
from llm.calllog import ProviderCall
from monitoring import telemetry


class ExecutionCancelled(BaseException):
    """Raised from a callback to stop a run. BaseException, because DSPy swallows Exceptions
    raised in callbacks (docs/dspy.md) and would carry on calling the LM."""


class TraceRecorder(BaseCallback):
    """Collects the trace of one execution. Thread-safe: modules may fan out into threads."""

    def __init__(self, cancel_check: Callable[[], bool] | None = None, telemetry_meta: dict | None = None):
        self.entries: list[dict] = []
        self.cancel_check = cancel_check
        self.meta = telemetry_meta or {}
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[dict, float]] = {}
        self._step = threading.local()
        self._open_steps: dict[str, tuple[dict, float]] = {}

    # --- pipeline observer -------------------------------------------------------------------
    def step_started(self, name: str, module: str, inputs: dict) -> None:
        entry = {"kind": "module", "step": name, "module": module, "inputs": to_jsonable(inputs)}
        with self._lock:
            self.entries.append(entry)
            self._open_steps[name] = (entry, time.perf_counter())
        self._step.name = name
        telemetry.emit("module.execute.start", {}, {**self.meta, "module": module})

    def step_finished(self, name: str, outputs: dict | None, error: BaseException | None) -> None:
        with self._lock:
            entry, started = self._open_steps.pop(name, ({}, time.perf_counter()))
        entry["outputs"] = to_jsonable(outputs)
        entry["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
        entry["error"] = (
            None if error is None else {"type": type(error).__name__, "message": str(error)[:1000]}
        )
        self._step.name = None
        telemetry.emit(
            "module.execute.stop",
            {"duration_ms": entry["duration_ms"]},
            {**self.meta, "module": entry.get("module"), "status": "error" if error else "ok"},
        )

    # --- DSPy callbacks ----------------------------------------------------------------------
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.cancel_check is not None and self.cancel_check():
            raise ExecutionCancelled()
        calllog.begin_call()
        entry = {
            "kind": "lm",
            "step": getattr(self._step, "name", None),
            "model": getattr(instance, "model", None),
            "messages": to_jsonable(inputs.get("messages") or inputs.get("prompt")),
        }
        with self._lock:
            self.entries.append(entry)
            self._pending[call_id] = (entry, time.perf_counter())

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        log = calllog.end_call() or calllog.CallLog()
        with self._lock:
            entry, started = self._pending.pop(call_id, ({"kind": "lm"}, time.perf_counter()))
        calls = log.calls
        cache_hit = exception is None and not calls
        costs = [c.cost_usd for c in calls]
        known_costs = [c for c in costs if c is not None]
        entry.update(
            outputs=to_jsonable(outputs),
            prompt_tokens=sum(c.prompt_tokens for c in calls),
            completion_tokens=sum(c.completion_tokens for c in calls),
            # Unknown price (None) stays unknown rather than pretending the call was free.
            cost_usd=None if len(known_costs) < len(costs) else round(sum(known_costs), 10),
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            provider_latency_ms=round(sum(c.latency_ms for c in calls), 2),
            cache_hit=cache_hit,
            error=None
            if exception is None
            else {"type": type(exception).__name__, "message": str(exception)[:1000]},
        )
        # Routing: who answered (a provider, or the deployment whose cache entry answered), and
        # every fallback taken on the way with its reason.
        deployment = log.deployment or (entry.get("model") if cache_hit else None)
        entry.update(
            provider=log.provider or (calls[-1].provider if calls else None),
            deployment=deployment,
            fallbacks=list(log.fallbacks),
        )
        if cache_hit and log.cached_usage:
            saved = {
                "prompt_tokens": log.cached_usage.get("prompt_tokens", 0),
                "completion_tokens": log.cached_usage.get("completion_tokens", 0),
            }
            entry["saved_usage"] = saved
            model = deployment or entry.get("model")
            entry["saved_cost_usd"] = (
                pricing.cost_for_tokens(model, saved["prompt_tokens"], saved["completion_tokens"])
                if model
                else None
            )

    def on_embedding(self, call: ProviderCall, texts: int) -> None:
        """An embedding request the gateway sent for this run (cached texts never get here)."""
        entry = {
            "kind": "embedding",
            "step": getattr(self._step, "name", None),
            "model": call.model,
            "texts": texts,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": 0,
            "cost_usd": None if call.cost_usd is None else round(call.cost_usd, 10),
            "latency_ms": round(call.latency_ms, 2),
            "cache_hit": False,
            "error": None if call.error is None else {"type": call.error},
        }
        with self._lock:
            self.entries.append(entry)

    # --- summary -----------------------------------------------------------------------------
    def metrics(self) -> dict:
        """Sums over the LM and embedding calls, overall and per model (the dashboards' rollups
        read `by_model`); `lm_calls` counts LM calls, `embedding_calls` embedding requests."""
        lm = [e for e in self.entries if e["kind"] in ("lm", "embedding")]
        by_model: dict[str, dict] = {}
        for entry in lm:
            row = by_model.setdefault(str(entry.get("model")), _empty_sums())
            _add(row, entry)
        total = _empty_sums()
        for row in by_model.values():
            for key in total:
                total[key] += row[key]
        costs = [e.get("cost_usd") for e in lm]
        return {
            **{key: round(value, 10) if isinstance(value, float) else value for key, value in total.items()},
            "cost_complete": all(c is not None for c in costs),
            "by_model": by_model,
        }


def _empty_sums() -> dict:
    return {
        "lm_calls": 0,
        "embedding_calls": 0,
        "cache_hits": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
        "saved_cost_usd": 0.0,
    }


def _add(row: dict, entry: dict) -> None:
    row["lm_calls" if entry["kind"] == "lm" else "embedding_calls"] += 1
    row["cache_hits"] += 1 if entry.get("cache_hit") else 0
    row["prompt_tokens"] += entry.get("prompt_tokens", 0)
    row["completion_tokens"] += entry.get("completion_tokens", 0)
    row["cost_usd"] += entry.get("cost_usd") or 0.0
    row["saved_cost_usd"] += entry.get("saved_cost_usd") or 0.0
