"""Fault injection of the simulated provider's HTTP server: the settings (`FaultConfig`) and the
per-request decision (latency, 429 with Retry-After, 5xx, timeouts, malformed replies).

Whether a request gets a fault is a pure function of (`seed`, request counter, fault kind), so
a run is reproducible; see `llm.sim.server` for the endpoints that change the settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

_MASK64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Fault-injection settings. Rates are probabilities in [0, 1]; 0 disables a fault."""

    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int | None = None  # 500 or 503; None picks per request
    rate_limit_rpm: int = 0  # 0 = unlimited
    rate_limit_window_s: float = 60.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    timeout_ms: float = 60_000.0
    malformed_rate: float = 0.0
    seed: int = 0
    require_auth: bool = False
    token_delay_ms: float = 0.0  # `stream: true`: the pause between streamed chunks (0: one write)

    def updated(self, changes: dict[str, Any]) -> FaultConfig:
        """A validated copy with `changes` applied; ValueError names the offending key."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = dataclasses.asdict(self)
        for key, value in changes.items():
            # `from __future__ import annotations` leaves each field's type as its source text.
            values[key] = _convert(key, value, cast(str, fields[key].type))
        config = FaultConfig(**values)
        config._validate()
        return config

    def _validate(self) -> None:
        for name in ("spike_rate", "error_rate", "rate_limit_rate", "timeout_rate", "malformed_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "spike_ms",
            "timeout_ms",
            "retry_after_s",
            "token_delay_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.rate_limit_rpm < 0:
            raise ValueError("rate_limit_rpm must not be negative")
        if self.rate_limit_window_s <= 0:
            raise ValueError("rate_limit_window_s must be positive")
        if self.error_status not in (None, 500, 502, 503, 504):
            raise ValueError("error_status must be 500, 502, 503, 504 or null")


def _convert(key: str, value: Any, annotation: str) -> Any:
    """Coerce a JSON or command-line value to a config field's type."""
    try:
        if value is None and "None" in annotation:
            return None
        if annotation.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if annotation.startswith("int"):
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: invalid value {value!r}") from None


def _mix(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash for per-request fault choices."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


_FAULT_SALT = {
    "rate": 1,
    "error": 2,
    "status": 3,
    "timeout": 4,
    "malformed": 5,
    "jitter": 6,
    "spike": 7,
    "shape": 8,
}


@dataclasses.dataclass(slots=True)
class Decision:
    """What happens to one request: `kind` is ok, rate_limited, error, timeout or malformed."""

    kind: str
    index: int
    delay_s: float = 0.0
    status: int = 200
    retry_after: float = 0.0


def decide(config: FaultConfig, index: int, admit: Callable[[int, float], float | None]) -> Decision:
    """Fault decision for request number `index`: a pure function of (seed, index, fault kind),
    except for the sliding-window rate limit, which `admit(limit, window_s)` keeps (None: admitted,
    else seconds until a slot frees)."""
    base = _mix(config.seed & _MASK64) ^ (index << 4)

    def unit(kind: str) -> float:
        return _mix(base ^ _FAULT_SALT[kind]) / 18446744073709551616.0

    delay = config.latency_ms
    if config.latency_jitter_ms:
        delay += config.latency_jitter_ms * unit("jitter")
    if config.spike_rate and unit("spike") < config.spike_rate:
        delay += config.spike_ms
    delay_s = delay / 1000.0
    if config.rate_limit_rpm:
        wait = admit(config.rate_limit_rpm, config.rate_limit_window_s)
        if wait is not None:
            return Decision("rate_limited", index, delay_s, 429, wait)
    if config.rate_limit_rate and unit("rate") < config.rate_limit_rate:
        return Decision("rate_limited", index, delay_s, 429, config.retry_after_s)
    if config.error_rate and unit("error") < config.error_rate:
        status = config.error_status or (500 if unit("status") < 0.5 else 503)
        return Decision("error", index, delay_s, status)
    if config.timeout_rate and unit("timeout") < config.timeout_rate:
        return Decision("timeout", index, delay_s + config.timeout_ms / 1000.0)
    if config.malformed_rate and unit("malformed") < config.malformed_rate:
        return Decision("malformed", index, delay_s)
    return Decision("ok", index, delay_s)
