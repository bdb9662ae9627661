"""Progress, accounting and stopping for one optimization attempt.

`RunMonitor` is a DSPy callback: it counts LM calls (cache replays apart, from the gateway's
per-call log), tokens and cost, counts trials (evaluations or metric calls), remembers the best
candidate program an optimizer evaluated, and stops the run from `on_lm_start` — by raising a
BaseException, the only kind DSPy does not swallow — when it is cancelled, taken over, out of
time or over its cost budget. The process heartbeat (dspex_site.jobs) writes the progress to the
run row every few seconds and learns there whether the run is still ours.
"""

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from dspy.utils.callback import BaseCallback

from llm import calllog
from llm.calllog import ProviderCall


class RunStopped(BaseException):
    """Raised inside DSPy to stop an attempt. BaseException: DSPy swallows Exceptions from callbacks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Reasons an attempt stops early. Time and cost keep the best result so far; the others do not.
CANCELLED, LOST, TIME_LIMIT, COST_BUDGET = "cancelled", "lost", "time_limit", "cost_budget"


class RunMonitor(BaseCallback):
    """Thread-safe counters and stop checks for one attempt (optimizers fan out into threads)."""

    def __init__(self, *, deadline: float, cost_budget: float | None, trials_total: int | None, unit: str):
        self.deadline, self.cost_budget = deadline, cost_budget
        self.unit = unit
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.stop_reason: str | None = None
        self.phase = "starting"
        self.counts = {
            "lm_calls": 0,
            "cache_hits": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
            "trials_done": 0,
        }
        self.trials_total = trials_total
        self.baseline_score: float | None = None
        self.best_score: float | None = None
        self.best_state: dict | None = None
        self._evaluating: dict[str, Any] = {}

    # --- stopping ------------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def check(self) -> None:
        if self.stop_reason is None and time.monotonic() >= self.deadline:
            self.stop_reason = TIME_LIMIT
        if (
            self.stop_reason is None
            and self.cost_budget is not None
            and self.counts["cost_usd"] >= self.cost_budget
        ):
            self.stop_reason = COST_BUDGET
        if self.stop_reason is not None:
            raise RunStopped(self.stop_reason)

    # --- DSPy callbacks ------------------------------------------------------------------------
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.check()
        calllog.begin_call()

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        log = calllog.end_call() or calllog.CallLog()
        with self._lock:
            self.counts["lm_calls"] += 1
            if exception is None and not log.calls:
                self.counts["cache_hits"] += 1
            for call in log.calls:
                self.counts["prompt_tokens"] += call.prompt_tokens
                self.counts["completion_tokens"] += call.completion_tokens
                self.counts["cost_usd"] += call.cost_usd or 0.0

    def on_embedding(self, call: ProviderCall, texts: int) -> None:
        """Embedding requests of Retrieve steps spend the run's money too (cached ones do not)."""
        with self._lock:
            self.counts["prompt_tokens"] += call.prompt_tokens
            self.counts["cost_usd"] += call.cost_usd or 0.0

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self._evaluating[call_id] = inputs.get("program")

    def on_evaluate_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            program = self._evaluating.pop(call_id, None)
            if exception is not None or outputs is None:
                return
            if self.unit == "evaluations" and self.phase == "compiling":
                self.counts["trials_done"] += 1
            score = getattr(outputs, "score", None)
        if score is not None and self.phase == "compiling":
            self.candidate(float(score) / 100, program)

    # --- trials and candidates -----------------------------------------------------------------
    def trial(self, n: int = 1) -> None:
        with self._lock:
            self.counts["trials_done"] += n

    def candidate(self, score: float, program: Any, state: dict | None = None) -> None:
        """Remember the best candidate seen while compiling (kept if the run is stopped early)."""
        if program is None and state is None:
            return
        with self._lock:
            if self.best_score is not None and score <= self.best_score:
                return
            self.best_score = score
            self.best_state = copy.deepcopy(state) if state is not None else program.dump_state()

    def counting_metric(self, metric: Callable) -> Callable:
        """The metric, counting calls as trials when the optimizer's unit is metric calls."""
        if self.unit != "metric_calls":
            return metric

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.phase == "compiling":
                self.trial()
            return metric(*args, **kwargs)

        counted.__name__ = getattr(metric, "__name__", "metric")
        return counted

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
        counts["cost_usd"] = round(counts["cost_usd"], 8)
        return {
            "phase": self.phase,
            "trial_unit": self.unit,
            "trials_total": self.trials_total,
            **counts,
            "baseline_score": self.baseline_score,
            "best_score": self.best_score,
            "elapsed_s": round(time.monotonic() - self.started, 2),
        }
