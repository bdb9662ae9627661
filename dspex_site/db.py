"""Database connections: the in-process pool, the session alias, TLS start-up check.

With `DSPEX_DB_POOL_MAX` set, every process draws its connections from Django's psycopg pool
(`OPTIONS["pool"]`, built in settings). A connection is taken at a thread's first query and
normally held until the request or task ends; `release()` hands it back earlier, while a run
waits on its LM calls, so connections scale with the statements in flight rather than with the
executions in flight. Behind PgBouncer in transaction mode (`DSPEX_DB_POOLER=pgbouncer`) nothing
may need a session: what does goes to `session_alias()` (`DATABASE_DIRECT_URL` when set).
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

DIRECT_ALIAS = "direct"
REPLICA_ALIAS = "replica"
# What readiness and /metrics report of psycopg_pool's `get_stats()`.
POOL_STATS = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting", "requests_errors")


def session_alias() -> str:
    """The alias for work that needs a session (a server-side cursor across transactions, a
    long streaming read): the direct connection when configured, else the default one."""
    return DIRECT_ALIAS if DIRECT_ALIAS in settings.DATABASES else DEFAULT_DB_ALIAS


def _pool_of(alias: str) -> Any:
    """The alias's psycopg pool if this process made one (None otherwise; never creates one)."""
    wrapper = connections[alias]
    pools = getattr(wrapper, "_connection_pools", None)
    return pools.get(alias) if pools is not None else None


def pooled(alias: str = DEFAULT_DB_ALIAS) -> bool:
    return bool(connections.settings[alias].get("OPTIONS", {}).get("pool"))


def release(alias: str = DEFAULT_DB_ALIAS) -> None:
    """Give this thread's pooled connection back before a long wait (an LM call), so that it
    serves other threads meanwhile; the next query takes one again. No-op without a pool or
    inside a transaction (its connection must stay)."""
    if not pooled(alias):
        return
    wrapper = connections[alias]
    if wrapper.connection is not None and not wrapper.in_atomic_block:
        wrapper.close()


def pool_stats() -> dict[str, dict[str, int]]:
    """{alias: stats} of the pools this process has, as psycopg_pool counts them."""
    stats = {}
    for alias in connections.settings:
        pool = _pool_of(alias)
        if pool is not None:
            raw = pool.get_stats()
            stats[alias] = {key: int(raw.get(key, 0)) for key in POOL_STATS}
    return stats


def describe(alias: str = DEFAULT_DB_ALIAS) -> dict[str, Any]:
    """How the alias connects: pooler, pool, TLS mode (no credentials)."""
    options = connections.settings[alias].get("OPTIONS", {})
    return {
        "pooler": settings.DB_POOLER or "none",
        "pool": "in-process" if options.get("pool") else "none",
        "sslmode": options.get("sslmode", "libpq default (prefer)"),
    }


def connect_error_message(alias: str, exc: BaseException) -> str:
    """A start-up error people can act on: what failed, and for TLS what verification means."""
    options = connections.settings[alias].get("OPTIONS", {})
    sslmode = options.get("sslmode")
    message = f"cannot connect to database {alias!r}: {str(exc).strip()}"
    if sslmode in ("verify-ca", "verify-full"):
        message += (
            f" (DATABASE_URL asks sslmode={sslmode}: the server's certificate must be signed by the CA in "
            f"sslrootcert={options.get('sslrootcert', '~/.postgresql/root.crt')!r}"
            + (" and name the host the URL connects to" if sslmode == "verify-full" else "")
            + "; the connection is refused rather than made without verification)"
        )
    return message


def check_connections(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """System check run by `migrate` and `check --database ALIAS`: connect, and refuse to start
    with a clear message (a certificate that does not verify, a wrong host) rather than fail
    on the first request; a verify-ca/verify-full connection must really be TLS."""
    errors: list[checks.CheckMessage] = []
    for alias in databases or ():
        wrapper = connections[alias]
        if wrapper.vendor != "postgresql":
            continue
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                row = cursor.fetchone()
        except Exception as exc:
            errors.append(checks.Error(connect_error_message(alias, exc), id="dspex_site.E010"))
            continue
        sslmode = wrapper.settings_dict.get("OPTIONS", {}).get("sslmode")
        if sslmode in ("require", "verify-ca", "verify-full") and not (row and row[0]):
            errors.append(
                checks.Error(
                    f"database {alias!r}: sslmode={sslmode} but the connection is not TLS",
                    id="dspex_site.E011",
                )
            )
    return errors


# --- the read replica (DATABASE_REPLICA_URL) --------------------------------------------------
# Seconds the replica is behind: 0 when it has replayed all it received, else the age of the
# last transaction it replayed (what a reader may miss at most); NULL before any replay.
_LAG_SQL = (
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
    "THEN 0 ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END"
)


@dataclass
class ReplicaState:
    """What this process last found of the replica: where lag-tolerant reads go, and why."""

    serving: str  # "replica" or "primary"
    lag_s: float | None
    reason: str | None
    checked_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "serving": self.serving,
            "lag_s": None if self.lag_s is None else round(self.lag_s, 3),
            "max_lag_s": settings.DSPEX_REPLICA_MAX_LAG_S,
            **({"reason": self.reason} if self.reason else {}),
        }


_replica_lock = threading.Lock()
_replica: ReplicaState | None = None


def replica_configured() -> bool:
    return REPLICA_ALIAS in settings.DATABASES


def _probe() -> ReplicaState:
    now = time.monotonic()
    try:
        with connections[REPLICA_ALIAS].cursor() as cursor:
            cursor.execute(_LAG_SQL)
            in_recovery, lag = cursor.fetchone()
    except Exception as exc:
        connections[REPLICA_ALIAS].close()
        return ReplicaState("primary", None, f"down: {str(exc).strip()[:200]}", now)
    if not in_recovery:
        return ReplicaState("primary", None, "not in recovery: not a replica (promoted?)", now)
    if lag is None:
        return ReplicaState("primary", None, "lag unknown: nothing replayed yet", now)
    lag = float(lag)
    if lag > settings.DSPEX_REPLICA_MAX_LAG_S:
        return ReplicaState("primary", lag, f"lagging {lag:.1f} s > DSPEX_REPLICA_MAX_LAG_S", now)
    return ReplicaState("replica", lag, None, now)


def replica_state() -> ReplicaState | None:
    """The replica's state, probed at most every `DSPEX_REPLICA_CHECK_S` per process (None:
    no replica configured). One caller probes; the others read the last result."""
    global _replica
    if not replica_configured():
        return None
    state = _replica
    if state is not None and time.monotonic() - state.checked_at < settings.DSPEX_REPLICA_CHECK_S:
        return state
    with _replica_lock:
        state = _replica
        if state is None or time.monotonic() - state.checked_at >= settings.DSPEX_REPLICA_CHECK_S:
            state = _replica = _probe()
            if state.serving == "primary":
                logger.warning("read replica not used, reads go to the primary: %s", state.reason)
    return state


def replica_failed(exc: BaseException) -> None:
    """A read on the replica failed: send reads to the primary until the next probe."""
    global _replica
    connections[REPLICA_ALIAS].close()
    _replica = ReplicaState("primary", None, f"down: {str(exc).strip()[:200]}", time.monotonic())


def read_alias() -> str:
    """Where a read that tolerates lag goes: the replica while it answers and is within
    `DSPEX_REPLICA_MAX_LAG_S`, else the primary. Never for a read that must see this
    request's (or a just-made) write, nor inside a transaction."""
    state = replica_state()
    return REPLICA_ALIAS if state is not None and state.serving == "replica" else DEFAULT_DB_ALIAS
