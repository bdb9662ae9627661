"""Admission control for provider calls, shared by every process through Redis.

Per provider endpoint (`Route.provider` + host of `Route.endpoint`, never a secret), which is
per deployment wherever deployments differ by provider or region (two models on one server share
its breaker and its account's limits). Limits come from `DSPEX_PROVIDER_LIMITS` and the
registry's own `DSPEX_PROVIDERS.<name>.limits` and `timeout_s`:

* a circuit breaker: closed -> open after N consecutive transient failures (5xx, timeouts,
  connection errors; not 429s or 4xx), open -> half-open after the reset timeout with exactly
  ONE trial call across all processes (a lease: a trial whose process died is re-granted once
  the lease runs out), then closed or open again;
* rate limits: token buckets for requests and tokens per minute; traffic that is not
  interactive may not take the last `DSPEX_RATE_LIMIT_RESERVE` of a bucket, so user-facing calls
  are served first when the budget is short;
* a bulkhead: at most `max_concurrent` calls in flight (leases that expire after the call
  timeout, so a crashed process frees its slots); optimization traffic has its own pool.

Why not pybreaker's Redis storage: it lets every process send trial calls in half-open and costs
several round trips per call. Here admission (breaker + buckets + bulkhead) is one Lua script and
the outcome (lease release, token correction, breaker transition, spend) is another: two round
trips per provider call, atomic across processes, on Redis' own clock (no skew between hosts).

Fail open: Redis trouble never fails a call. The error is counted, and this process skips
admission for `DSPEX_CACHE_RETRY_AFTER_S`, so a dead Redis costs at most one socket timeout.
"""

import contextlib
import contextvars
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from prometheus_client import Counter

from dspex_site.errors import DomainError
from dspex_site.shared_redis import FailOpenRedis
from llm.routing import providers

logger = logging.getLogger(__name__)

INTERACTIVE, BATCH, OPTIMIZATION = "interactive", "batch", "optimization"
STATES = {"closed": 0, "half_open": 1, "open": 2}

REDIS_ERRORS = Counter(
    "dspex_resilience_redis_error", "Admission checks that failed open because Redis was unavailable"
)
REJECTIONS = Counter(
    "dspex_llm_admission_rejected",
    "Provider calls refused before reaching the provider",
    ["provider", "reason"],
)


# --- errors -------------------------------------------------------------------------------------
class AdmissionError(DomainError):
    """A call refused before it reached the provider; `retry_after` in seconds."""

    reason = code = "refused"

    def __init__(self, provider: str, retry_after: float, message: str = ""):
        self.provider = provider
        self.retry_after = round(max(retry_after, 0.0), 3)
        super().__init__(
            message or f"{self.reason} for provider {provider}; retry in {self.retry_after:.1f} s"
        )


class CircuitOpenError(AdmissionError):
    reason = code = "circuit_open"

    def __init__(self, provider: str, retry_after: float):
        super().__init__(
            provider,
            retry_after,
            f"circuit breaker for provider {provider} is open after repeated failures; "
            f"retry in {max(retry_after, 0):.1f} s",
        )


class RateLimitedError(AdmissionError):
    reason = code = "rate_limited"

    def __init__(self, provider: str, retry_after: float):
        super().__init__(
            provider, retry_after, f"rate limit for provider {provider} reached; retry in {retry_after:.1f} s"
        )


class BulkheadFullError(AdmissionError):
    reason = code = "bulkhead_full"

    def __init__(self, provider: str, retry_after: float):
        super().__init__(
            provider,
            retry_after,
            f"too many calls in flight to provider {provider}; retry in {retry_after:.1f} s",
        )


# --- traffic class ------------------------------------------------------------------------------
_traffic: contextvars.ContextVar[str] = contextvars.ContextVar("dspex_traffic", default=BATCH)
_program: contextvars.ContextVar[str | None] = contextvars.ContextVar("dspex_program", default=None)
# (project id, API key id) the calls are made for: their spend counts into those budgets too.
_owner: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "dspex_owner", default=(None, None)
)


@contextlib.contextmanager
def traffic(kind: str, program_id: Any = None, project_id: Any = None, key_id: Any = None) -> Iterator[None]:
    """Mark the calls made inside as `interactive`, `batch` or `optimization` traffic (and, for
    the per-program, per-project and per-key budgets, whom they are made for)."""
    token = _traffic.set(kind)
    program_token = _program.set(str(program_id) if program_id is not None else _program.get())
    project, key = _owner.get()
    owner_token = _owner.set(
        (
            str(project_id) if project_id is not None else project,
            str(key_id) if key_id is not None else key,
        )
    )
    try:
        yield
    finally:
        _owner.reset(owner_token)
        _program.reset(program_token)
        _traffic.reset(token)


def current_owner() -> dict[str, str | None]:
    """Whom the current calls are made for, as `llm.budgets.check` takes it."""
    project, key = _owner.get()
    return {"program_id": _program.get(), "project_id": project, "key_id": key}


def current_traffic() -> str:
    return _traffic.get()


def current_program() -> str | None:
    return _program.get()


# --- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    """Limits of one provider endpoint; 0 means unlimited."""

    failure_threshold: int = 5
    reset_timeout_s: float = 60.0
    call_timeout_s: float = 30.0
    rpm: int = 0
    tpm: int = 0
    max_concurrent: int = 0
    max_concurrent_optimization: int = 0
    max_wait_s: float = 10.0


def policy_for(provider: str, kind: str = "chat") -> Policy:
    """Defaults, then `DSPEX_PROVIDER_LIMITS["default"]`, then the provider's (or "embeddings") entry."""
    limits = settings.DSPEX_PROVIDER_LIMITS
    # Numbers from settings, then the operator's DSPEX_PROVIDER_LIMITS JSON entries as they were given.
    base: dict[str, Any] = {
        "failure_threshold": settings.DSPEX_BREAKER_FAILURES,
        "reset_timeout_s": settings.DSPEX_BREAKER_RESET_S,
        "call_timeout_s": settings.DSPEX_LM_TIMEOUT_S,
        "max_wait_s": settings.DSPEX_RATE_LIMIT_MAX_WAIT_S,
    }
    if kind == "embeddings":
        base.update(failure_threshold=3, reset_timeout_s=30.0, call_timeout_s=120.0)
    base.update(limits.get("default", {}))
    if kind == "embeddings":
        base.update(limits.get("embeddings", {}))
    else:
        base.update(limits.get(provider, {}))
        # The registry's own entry (DSPEX_PROVIDERS.<name>.limits, timeout_s) is the most specific.
        registered = providers().get(provider)
        if registered is not None:
            base.update(registered.limits)
            if registered.timeout_s is not None:
                base["call_timeout_s"] = registered.timeout_s
    fields = Policy.__dataclass_fields__
    return Policy(**{key: value for key, value in base.items() if key in fields})


def endpoint_name(provider: str, endpoint: str) -> str:
    """A stable, secret-free name for a provider endpoint: `openai@api.openai.com`."""
    if "://" not in endpoint:
        return f"{provider}@{endpoint}"
    parts = urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2] or endpoint  # never the userinfo (it may hold a password)
    return f"{provider}@{host}"


# --- Redis --------------------------------------------------------------------------------------
_ADMIT = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local reset_ms, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, reserve = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local est, slots, lease_id = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
-- breaker
local b = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'trial_until')
local state = b[1] or 'closed'
local trial = 0
if state == 'open' then
  local left = tonumber(b[2]) + reset_ms - now
  if left > 0 then return {1, left, 0} end
  trial = 1
elseif state == 'half_open' then
  -- another process's trial is in flight: it usually ends long before its lease does
  local left = tonumber(b[3] or '0') - now
  if left > 0 then return {1, math.min(left, reset_ms), 0} end
  trial = 1
end
-- rate limits: buckets refill continuously; lower classes keep `reserve` of each bucket untouched
local function bucket(key, cap, cost)
  if cap <= 0 then return nil, 0 end
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(v[1] or cap)
  local ts = tonumber(v[2] or now)
  tokens = math.min(cap, tokens + (now - ts) * cap / 60000)
  local floor = cap * reserve
  -- a request larger than this class may ever hold waits for a full share, then goes into debt
  local need = math.min(cost, cap - floor) + floor - tokens
  if need > 0 then return tokens, math.ceil(need * 60000 / cap) end
  return tokens, 0
end
local rt, rwait = bucket(KEYS[2], rpm, 1)
local tt, twait = bucket(KEYS[3], tpm, est)
local wait = math.max(rwait, twait)
if wait > 0 then return {2, wait, 0} end
-- bulkhead (and in-flight tracking for least-busy deployments, which need the count without a cap)
local track = tonumber(ARGV[9] or '0')
if slots > 0 or track == 1 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if slots > 0 and redis.call('ZCARD', KEYS[4]) >= slots then
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {3, math.max(1, tonumber(first[2]) - now), 0}
  end
  redis.call('ZADD', KEYS[4], now + lease_ms, lease_id)
  redis.call('PEXPIRE', KEYS[4], lease_ms * 2)
end
-- commit
if rt then
  redis.call('HSET', KEYS[2], 'tokens', rt - 1, 'ts', now)
  redis.call('PEXPIRE', KEYS[2], 120000)
end
if tt then
  redis.call('HSET', KEYS[3], 'tokens', tt - est, 'ts', now)
  redis.call('PEXPIRE', KEYS[3], 120000)
end
if trial == 1 then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'trial_until', now + lease_ms, 'trial', lease_id)
end
return {0, 0, trial}
"""

_FINISH = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000 + math.floor(tonumber(now_t[2]) / 1000)
local outcome, threshold, lease_id = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local token_delta, tpm, err = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREM', KEYS[4], lease_id)
if tpm > 0 and token_delta ~= 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBYFLOAT', KEYS[3], 'tokens', -token_delta)
end
local b = redis.call('HMGET', KEYS[1], 'state', 'trial', 'failures')
local state, trial, failures = b[1] or 'closed', b[2], tonumber(b[3] or '0')
local mine = state == 'half_open' and trial == lease_id
if outcome == 'failure' then
  failures = failures + 1
  redis.call('HSET', KEYS[1], 'failures', failures, 'last_error', err, 'last_error_at', now)
  if mine or (state == 'closed' and failures >= threshold) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'trial_until', 0)
    redis.call('HINCRBY', KEYS[1], 'opened_count', 1)
  end
  redis.call('PEXPIRE', KEYS[1], 604800000)
elseif outcome == 'neutral' then
  -- the trial was cancelled, not answered: free the lease so the next call becomes the trial
  if mine then redis.call('HSET', KEYS[1], 'trial_until', 0) end
elseif mine then
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trial_until', 0)
  redis.call('PEXPIRE', KEYS[1], 604800000)
elseif state == 'closed' and failures > 0 then
  redis.call('HSET', KEYS[1], 'failures', 0)
end
local cost = tonumber(ARGV[7])
if cost > 0 then
  for i = 5, #KEYS do
    redis.call('INCRBYFLOAT', KEYS[i], cost)
    redis.call('EXPIRE', KEYS[i], 40 * 86400)
  end
end
return 1
"""

_RESET = """
redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trial_until', 0)
return 1
"""


def _count_failure(op: str, exc: Exception) -> None:
    REDIS_ERRORS.inc()
    logger.warning("resilience %s: Redis unavailable, failing open: %s", op, type(exc).__name__)


# The default cache alias' Redis, failing open: the caches' client, with a skip window of its own.
_redis = FailOpenRedis("default", "admission", on_failure=_count_failure)


def _key(name: str, part: str) -> str:
    return f"dspex:res:{name}:{part}"


def spend_key(scope: str, target: str, period: str, now: float | None = None) -> str:
    """The Redis counter of USD spent by `scope` (provider, program, project, key) `target` in the
    current `period` (daily, monthly; UTC)."""
    stamp = time.gmtime(now if now is not None else time.time())
    if period == "daily":
        return f"dspex:spend:{scope}:{target}:d:{time.strftime('%Y-%m-%d', stamp)}"
    return f"dspex:spend:{scope}:{target}:m:{time.strftime('%Y-%m', stamp)}"


def spend_keys(
    provider: str,
    program: str | None,
    now: float | None = None,
    project: str | None = None,
    key: str | None = None,
) -> list[str]:
    """Redis counters of USD spent today and this month (UTC), per provider and, when given, per
    program, project and API key: every call's cost goes into each."""
    keys = []
    for scope, target in (("provider", provider), ("program", program), ("project", project), ("key", key)):
        if target:
            keys += [spend_key(scope, target, "daily", now), spend_key(scope, target, "monthly", now)]
    return keys


# --- admission ----------------------------------------------------------------------------------
@dataclass
class Ticket:
    """An admitted call: release it with `finish()` whatever happens."""

    name: str
    provider: str
    policy: Policy
    lease_id: str
    pool: str
    estimate: int
    trial: bool = False
    redis_ok: bool = True

    def finish(
        self, *, failure: str | None, tokens: int = 0, cost_usd: float = 0.0, neutral: bool = False
    ) -> None:
        """Record the outcome: `failure` is an error text for a transient failure, else None;
        `neutral` when the call was abandoned (cancelled) and says nothing about the provider."""
        if not self.redis_ok:
            return
        client = _redis.client()
        if client is None:
            return
        keys = [
            _key(self.name, "breaker"),
            _key(self.name, "rpm"),
            _key(self.name, "tpm"),
            _key(self.name, f"inflight:{self.pool}"),
            *spend_keys(self.provider, current_program(), project=_owner.get()[0], key=_owner.get()[1]),
        ]
        args = [
            "neutral" if neutral else "failure" if failure is not None else "success",
            self.policy.failure_threshold,
            self.lease_id,
            (tokens - self.estimate) if tokens else 0,
            self.policy.tpm,
            (failure or "")[:300],
            repr(float(cost_usd or 0.0)),
        ]
        try:
            _redis.script(client, _FINISH)(keys=keys, args=args)
        except Exception as exc:
            _redis.failed("finish", exc)


def estimate_tokens(request: Any) -> int:
    """A cheap upper-ish guess of a request's tokens, charged at admission and corrected after."""
    chars = 0
    for message in getattr(request, "messages", None) or ():
        for part in getattr(message, "parts", None) or ():
            chars += len(str(getattr(part, "text", "") or ""))
        chars += len(str(getattr(message, "content", "") or ""))
    system = getattr(request, "system", None)
    chars += len(str(system or ""))
    return max(1, chars // 4)


def admit(
    provider: str,
    endpoint: str,
    *,
    estimate: int = 1,
    kind: str = "chat",
    max_wait_s: float | None = None,
    track: bool = False,
) -> Ticket:
    """Admit one provider call or raise an AdmissionError (waiting up to the policy's bound, or
    `max_wait_s` when given, when only the rate limit or the bulkhead is short: the gateway
    passes 0 while another deployment could take the call at once). `track` holds an in-flight
    lease even without a bulkhead, so `in_flight()` counts the call (least-busy deployments)."""
    name = endpoint_name(provider, endpoint)
    policy = policy_for(provider, kind)
    traffic_class = current_traffic()
    pool = OPTIMIZATION if traffic_class == OPTIMIZATION and policy.max_concurrent_optimization else "main"
    slots = policy.max_concurrent_optimization if pool == OPTIMIZATION else policy.max_concurrent
    reserve = 0.0 if traffic_class == INTERACTIVE else settings.DSPEX_RATE_LIMIT_RESERVE
    ticket = Ticket(name, provider, policy, uuid.uuid4().hex, pool, estimate)
    # A call cannot outlive its timeout: a lease held past it belongs to a process that died.
    lease_ms = int(policy.call_timeout_s * 1000) + 1000
    keys = [_key(name, "breaker"), _key(name, "rpm"), _key(name, "tpm"), _key(name, f"inflight:{pool}")]
    args = [
        int(policy.reset_timeout_s * 1000),
        lease_ms,
        policy.rpm,
        policy.tpm,
        reserve,
        estimate if policy.tpm else 0,
        slots,
        ticket.lease_id,
        1 if track else 0,
    ]
    deadline = time.monotonic() + (policy.max_wait_s if max_wait_s is None else max_wait_s)
    while True:
        client = _redis.client()
        if client is None:
            ticket.redis_ok = False
            return ticket
        try:
            status, wait_ms, trial = _redis.script(client, _ADMIT)(keys=keys, args=args)
        except Exception as exc:
            _redis.failed("admit", exc)
            ticket.redis_ok = False
            return ticket
        if status == 0:
            ticket.trial = bool(trial)
            return ticket
        wait_s = int(wait_ms) / 1000
        if status == 1:
            REJECTIONS.labels(provider, "circuit_open").inc()
            raise CircuitOpenError(name, wait_s)
        left = deadline - time.monotonic()
        # A bucket says exactly when it refills: give up at once if that is past the bound. A
        # bulkhead slot frees whenever a call ends: poll for one until the bound.
        if (status == 2 and wait_s > left) or (status == 3 and left <= 0):
            error = RateLimitedError if status == 2 else BulkheadFullError
            REJECTIONS.labels(provider, error.reason).inc()
            raise error(name, wait_s)
        time.sleep(max(min(wait_s, left, 0.1 if status == 3 else wait_s), 0.005))


# --- inspection and operations -------------------------------------------------------------------
def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def known_endpoints() -> list[str]:
    """Endpoints with breaker state in Redis (any process has called them), sorted."""
    client = _redis.client()
    if client is None:
        return []
    try:
        keys = client.scan_iter(match=_key("*", "breaker"), count=500)
        return sorted(_decode(k)[len("dspex:res:") : -len(":breaker")] for k in keys)
    except Exception as exc:
        _redis.failed("scan", exc)
        return []


def status(name: str) -> dict:
    """State, consecutive failures and last error of one endpoint's breaker, plus calls in flight."""
    client = _redis.client()
    info: dict[str, Any] = {"name": name, "provider": name.split("@", 1)[0], "state": "unknown"}
    if client is None:
        return info
    try:
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        with client.pipeline(transaction=False) as pipe:
            pipe.hgetall(_key(name, "breaker"))
            # Live leases only: those of a crashed process expire with the call timeout.
            pipe.zcount(_key(name, "inflight:main"), now_ms, "+inf")
            pipe.zcount(_key(name, f"inflight:{OPTIMIZATION}"), now_ms, "+inf")
            raw, main, opt = pipe.execute()
    except Exception as exc:
        _redis.failed("status", exc)
        return info
    fields = {_decode(k): _decode(v) for k, v in raw.items()}
    policy = policy_for(info["provider"])
    state = fields.get("state", "closed")
    opened_at = float(fields.get("opened_at") or 0)
    info.update(
        state=state,
        consecutive_failures=int(float(fields.get("failures") or 0)),
        times_opened=int(fields.get("opened_count") or 0),
        last_error=fields.get("last_error") or None,
        last_error_at=float(fields["last_error_at"]) / 1000 if fields.get("last_error_at") else None,
        retry_in_s=(
            round(max(0.0, (opened_at + policy.reset_timeout_s * 1000 - now_ms) / 1000), 3)
            if state == "open"
            else 0.0
        ),
        in_flight=int(main) + int(opt),
        limits={
            "failure_threshold": policy.failure_threshold,
            "reset_timeout_s": policy.reset_timeout_s,
            "call_timeout_s": policy.call_timeout_s,
            "rpm": policy.rpm,
            "tpm": policy.tpm,
            "max_concurrent": policy.max_concurrent,
            "max_concurrent_optimization": policy.max_concurrent_optimization,
        },
    )
    return info


def in_flight(names: list[str]) -> list[int] | None:
    """Live calls in flight per endpoint name across every process (one round trip), or None
    when Redis is unavailable: what `least-busy` deployments are ordered by."""
    client = _redis.client()
    if client is None:
        return None
    # This host's clock, not Redis' TIME (a second round trip on every least-busy call): a lease
    # lives for the call timeout + 1 s, so clock skew of a few ms does not change the count.
    now_ms = int(time.time() * 1000)
    try:
        with client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(_key(name, "inflight:main"), now_ms, "+inf")
                pipe.zcount(_key(name, f"inflight:{OPTIMIZATION}"), now_ms, "+inf")
            counts = pipe.execute()
    except Exception as exc:
        _redis.failed("in_flight", exc)
        return None
    return [int(counts[2 * i]) + int(counts[2 * i + 1]) for i in range(len(names))]


def reset(name: str) -> None:
    """Close an endpoint's breaker by hand (an operator action: audited by the caller)."""
    client = _redis.client()
    if client is None:
        raise ConnectionError("Redis is unavailable; the breaker state cannot be changed")
    _redis.script(client, _RESET)(keys=[_key(name, "breaker")], args=[])


def clear(name: str) -> None:
    """Forget everything about an endpoint (tests, decommissioned providers)."""
    client = _redis.client()
    if client is not None:
        client.delete(*(_key(name, part) for part in ("breaker", "rpm", "tpm", "inflight:main")))
        client.delete(_key(name, f"inflight:{OPTIMIZATION}"))


class BreakerCollector:
    """Scrape-time gauges read from Redis (the source of truth), whichever process is scraped."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        state = GaugeMetricFamily(
            "dspex_circuit_breaker_state",
            "Circuit breaker per provider endpoint: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )
        failures = GaugeMetricFamily(
            "dspex_circuit_breaker_failures", "Consecutive transient failures", labels=["provider"]
        )
        in_flight = GaugeMetricFamily(
            "dspex_provider_in_flight", "Provider calls in flight (bulkhead leases)", labels=["provider"]
        )
        for name in known_endpoints():
            info = status(name)
            if info["state"] not in STATES:
                continue
            state.add_metric([name], float(STATES[info["state"]]))
            failures.add_metric([name], float(info["consecutive_failures"]))
            in_flight.add_metric([name], float(info["in_flight"]))
        yield state
        yield failures
        yield in_flight
