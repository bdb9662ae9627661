"""Rate limits per project and per API key: requests (provider calls) and tokens per minute,
counted in Redis so every web process, worker and host shares them (README, "API keys").

A limit is set on a project's or a key's `Budget` row (`requests_per_minute`,
`tokens_per_minute`) or in `DSPEX_BUDGETS["projects"]`. Counting is a sliding minute (the
current minute's counter plus the previous one's, weighted by how much of it still overlaps the
last 60 s), as the API throttle counts:

* **new work** (an execution, a batch) of a project or key whose minute is full is refused
  before anything is stored: 429 `rate_limited` with `Retry-After` (`check`);
* **each provider call** of work already running is admitted by one Lua script that checks every
  limit of its project and key and counts the call in all of them at once (`admit`), and the
  tokens it used are added when it returns (`spend_tokens`). A refusal is an `AdmissionError`
  (`rate_limited`): a queued run is re-queued after `retry_after` without spending an attempt,
  as for a provider's own rate limit.

A token limit refuses once the minute's tokens have reached it (a call's tokens are known only
after it). Only projects and keys with a limit cost anything: the limits are read every
`budgets.REFRESH_S` per process, and calls of others skip Redis. Redis trouble fails open.
"""

import math
import time
from collections.abc import Iterator
from typing import Any

from llm import budgets, resilience

WINDOW_S = 60.0

# KEYS: 4 per limited target: requests (this minute, previous), tokens (this minute, previous).
# ARGV: previous minute's weight, counter expiry (ms), count the call (1/0), then per target its
# requests and tokens per minute (0: none). Returns {0} when admitted (and counted), else
# {target index (1-based), 1 requests | 2 tokens}.
_ADMIT = """
local weight = tonumber(ARGV[1])
local targets = #KEYS / 4
for i = 0, targets - 1 do
  local rpm, tpm = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  if rpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[4 * i + 2]) or '0') * weight
      + tonumber(redis.call('GET', KEYS[4 * i + 1]) or '0')
    if used + 1 > rpm then return {i + 1, 1} end
  end
  if tpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[4 * i + 4]) or '0') * weight
      + tonumber(redis.call('GET', KEYS[4 * i + 3]) or '0')
    if used >= tpm then return {i + 1, 2} end
  end
end
if ARGV[3] == '1' then
  for i = 0, targets - 1 do
    if redis.call('INCR', KEYS[4 * i + 1]) == 1 then redis.call('PEXPIRE', KEYS[4 * i + 1], ARGV[2]) end
  end
end
return {0}
"""


Rate = budgets.Rate  # loaded with the spend limits, from the same rows and settings


class RateLimitExceeded(resilience.AdmissionError):
    """A project's or key's requests or tokens per minute are used up (429 `rate_limited`)."""

    reason = code = "rate_limited"

    def __init__(self, rate: Rate, what: str, retry_after: float) -> None:
        self.rate, self.what = rate, what
        limit = rate.requests_per_minute if what == "requests" else rate.tokens_per_minute
        super().__init__(
            "-",
            retry_after,
            f"The {what} per minute of {rate.scope} '{rate.label}' ({limit}) are used up; "
            f"retry in {max(retry_after, 0):.1f} s.",
        )


def rates() -> list[Rate]:
    return budgets.limits_and_rates()[1]


def _selected(project_id: Any, key_id: Any) -> list[Rate]:
    wanted = {("project", str(project_id)), ("key", str(key_id))}
    return [rate for rate in rates() if (rate.scope, rate.target) in wanted]


def _keys(rate: Rate, index: int) -> list[str]:
    base = f"dspex:rate:{rate.scope}:{rate.target}"
    return [f"{base}:r:{index}", f"{base}:r:{index - 1}", f"{base}:t:{index}", f"{base}:t:{index - 1}"]


def _window() -> tuple[int, float, float]:
    now = time.time()
    index = int(now // WINDOW_S)
    elapsed = now - index * WINDOW_S
    return index, 1.0 - elapsed / WINDOW_S, elapsed


def _run(selected: list[Rate], count: bool) -> None:
    if not selected:
        return
    client = resilience._redis.client()
    if client is None:
        return
    index, weight, elapsed = _window()
    keys = [key for rate in selected for key in _keys(rate, index)]
    args: list[Any] = [weight, int(WINDOW_S * 2000), 1 if count else 0]
    for rate in selected:
        args += [rate.requests_per_minute or 0, rate.tokens_per_minute or 0]
    try:
        refused = resilience._redis.script(client, _ADMIT)(keys=keys, args=args, client=client)
    except Exception as exc:
        resilience._redis.failed("quota", exc)
        return
    if refused[0]:
        rate = selected[int(refused[0]) - 1]
        # The previous minute's share decays by the next minute at the latest.
        raise RateLimitExceeded(rate, "requests" if int(refused[1]) == 1 else "tokens", WINDOW_S - elapsed)


def check(project_id: Any = None, key_id: Any = None) -> None:
    """Refuse new work of this project or key when its minute is used up (counts nothing)."""
    _run(_selected(project_id, key_id), count=False)


def admit(owner: dict[str, Any]) -> list[Rate]:
    """Admit (and count) one provider call of the current work's project and key; returns the
    limits it counted in, for `spend_tokens`. Raises RateLimitExceeded."""
    selected = _selected(owner.get("project_id"), owner.get("key_id"))
    _run(selected, count=True)
    return selected


def spend_tokens(selected: list[Rate], tokens: int) -> None:
    """Add a finished call's tokens to the limits it was admitted under."""
    if not selected or tokens <= 0 or not any(rate.tokens_per_minute for rate in selected):
        return
    client = resilience._redis.client()
    if client is None:
        return
    index, _, _ = _window()
    try:
        with client.pipeline(transaction=False) as pipe:
            for rate in selected:
                key = _keys(rate, index)[2]
                pipe.incrby(key, tokens)
                pipe.pexpire(key, int(WINDOW_S * 2000))
            pipe.execute()
    except Exception as exc:
        resilience._redis.failed("quota", exc)


def usage(selected: list[Rate]) -> list[tuple[float, float]] | None:
    """(requests, tokens) used in the sliding minute of each limit, or None without Redis."""
    client = resilience._redis.client()
    if client is None or not selected:
        return None if client is None else []
    index, weight, _ = _window()
    try:
        values = client.mget([key for rate in selected for key in _keys(rate, index)])
    except Exception as exc:
        resilience._redis.failed("quota", exc)
        return None
    numbers = [float(v) if v is not None else 0.0 for v in values]
    return [
        (numbers[4 * i] + numbers[4 * i + 1] * weight, numbers[4 * i + 2] + numbers[4 * i + 3] * weight)
        for i in range(len(selected))
    ]


class QuotaCollector:
    """Scrape-time gauges: each project's and key's use of its per-minute limits."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        labels = ["scope", "target", "kind"]
        used = GaugeMetricFamily("dspex_rate_limit_used", "Used in the sliding minute", labels=labels)
        limit = GaugeMetricFamily("dspex_rate_limit_per_minute", "Per-minute limit", labels=labels)
        try:
            selected = rates()
        except Exception:
            selected = []
        amounts = usage(selected) or []
        for rate, (requests, tokens) in zip(selected, amounts, strict=False):
            for kind, value, per_minute in (
                ("requests", requests, rate.requests_per_minute),
                ("tokens", tokens, rate.tokens_per_minute),
            ):
                if per_minute:
                    used.add_metric([rate.scope, rate.label, kind], math.floor(value))
                    limit.add_metric([rate.scope, rate.label, kind], per_minute)
        yield used
        yield limit
