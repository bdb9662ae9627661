"""The execution answer cache: an identical request to the same release, answered without
running DSPy again.

A fully cached execution (every LM call answered by the LLM cache) computes nothing new: DSPy
builds the same prompts, the cache returns the same completions, the adapter parses them the
same way. Running that again costs more CPU than the rest of the execution together, so the
run's output, trace and metrics are kept and the next identical request is answered from them:

- **what counts as identical**: the program, its version and applied optimization result (the
  release), the validated input, the resolved variable values, and the routing (`llm.routing.
  fingerprint()`: providers, deployments, fallbacks, default model — never a key);
- **what is kept**: only a run that was itself answered entirely by the LLM cache, so an entry
  is exactly what replaying the LM cache would produce; never a run with a provider call, a
  failure or no LM call;
- **which programs**: only those whose steps are all `Predict` or `ChainOfThought` without tools.
  Retrieval reads corpora that change, tools and custom modules may do anything, and the
  sampling modules (`BestOfN`, `Refine`, ...) score attempts with reward functions: they always run;
- **where**: the `answers` cache (`caching.registry.ANSWERS`), on the LLM cache's Redis with
  its TTL, entry and byte limits (of its own), LRU eviction, fail-open behaviour and its own
  hit/miss stats. Purging the LLM cache purges the answers too; `"cache": false` or a program's
  cache policy off skips both.

An answered execution is still a stored row with its full trace (the kept run's entries, LM
calls marked `cache_hit`), metrics (`answer_cache_hit: true`), cost zero and its own duration;
the `answers` cache counts the hit, the LLM cache sees no lookup at all.
"""

import hashlib
from typing import Any

import orjson

from caching.registry import ANSWERS
from llm import routing
from programs.spec.plan import ProgramPlan

ANSWERABLE_MODULES = frozenset({"Predict", "ChainOfThought"})


def answerable(plan: ProgramPlan) -> bool:
    """Whether a program's runs may be answered from kept answers (see the module docstring)."""
    return bool(plan.steps) and all(
        step.module in ANSWERABLE_MODULES and not step.tools and step.custom_class is None
        for step in plan.steps
    )


def key_for(program_id: Any, version: int, result_id: Any, input_data: Any, variables: Any) -> str:
    request = orjson.dumps([input_data, variables, routing.fingerprint()], option=orjson.OPT_SORT_KEYS)
    return f"answer:{program_id}:{version}:{result_id or '-'}:{hashlib.sha256(request).hexdigest()}"


def lookup(key: str) -> dict[str, Any] | None:
    """The kept answer (`output`, `trace`, `metrics`), or None (a miss, or the cache is down)."""
    hit = ANSWERS.get(key)
    value = hit.value if hit is not None else None
    if not isinstance(value, dict) or not {"output", "trace", "metrics"} <= value.keys():
        return None
    return {**value, "metrics": {**value["metrics"], "answer_cache_hit": True}}


def keep(key: str, output: Any, trace: list[dict], metrics: dict) -> None:
    """Keep a run's answer if every one of its LM calls was a cache hit (and it made one)."""
    calls = [entry for entry in trace if entry.get("kind") in ("lm", "embedding")]
    if not calls or not all(entry.get("cache_hit") and not entry.get("error") for entry in calls):
        return
    ANSWERS.set(key, {"output": output, "trace": trace, "metrics": metrics}, cost_usd=0.0)
