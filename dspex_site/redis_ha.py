"""The one place that says how DSPex reaches Redis: one server (`REDIS_URL`), or a master that
Redis Sentinel names (`REDIS_SENTINELS` + `REDIS_SENTINEL_MASTER`), failing over to a replica.

Every Redis user goes through here:

- the Django caches (`CACHES` in settings: `cache_options`), which are also what the shared state
  of caching, provider admission (breakers, rate limits, spend budgets) and API throttles uses
  (`dspex_site.shared_redis.FailOpenRedis` takes their client);
- the Celery broker (`broker_url`, `broker_transport`, `broker_transport_options`);
- everything else that talks to Redis directly (worker and beat heartbeats, queue depths, the
  launcher's probe): `client()`;
- readiness and `/metrics` (`describe()`): which master this process is talking to.

With Sentinel, every client asks the sentinels for the master's address when it connects, and
connects again (asking again) when a connection breaks or the server it reached says it is no
longer the master (redis-py's `SentinelConnectionPool`, as django-redis and kombu both use it).
So a failover costs the cache and admission one failed lookup per process and then their
`DSPEX_CACHE_RETRY_AFTER_S` skip window (they fail open meanwhile), and the broker its publish
retries (`REDIS_FAILOVER_WAIT_S`), after which everything talks to the promoted replica.

The parsing half (`SentinelConfig.from_env`) reads only the environment: settings.py and the
Celery app (imported while the settings are still being read) both build from it.
"""

import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlparse

import redis
from django.core.exceptions import ImproperlyConfigured
from redis.sentinel import Sentinel

from dspex_site.env import env_float, env_int, env_list, env_str

DEFAULT_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class SentinelConfig:
    """Where the sentinels are and which master of theirs DSPex uses."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    password: str | None = None  # the Redis servers' (master and replicas)
    sentinel_password: str | None = None  # the sentinels' own (`requirepass` of redis-sentinel)
    socket_timeout: float = 0.5
    failover_wait_s: float = 5.0

    @classmethod
    def from_env(cls) -> "SentinelConfig | None":
        """The Sentinel settings from the environment, or None when `REDIS_SENTINELS` is unset;
        a malformed value stops start-up naming the variable."""
        raw = env_list("REDIS_SENTINELS", [])
        if not raw:
            return None
        sentinels = tuple(_host_port(item) for item in raw)
        master = env_str("REDIS_SENTINEL_MASTER", "")
        if not master:
            raise ImproperlyConfigured(
                "REDIS_SENTINELS is set: REDIS_SENTINEL_MASTER must name the master the sentinels monitor"
            )
        db = env_int("REDIS_DB", 0)
        if db < 0:
            raise ImproperlyConfigured(f"REDIS_DB must be a database number (0 or more), not {db}")
        wait = env_float("REDIS_FAILOVER_WAIT_S", 5.0)
        if wait < 0:
            raise ImproperlyConfigured(f"REDIS_FAILOVER_WAIT_S must be 0 or more seconds, not {wait}")
        return cls(
            sentinels=sentinels,
            master=master,
            db=db,
            password=env_str("REDIS_PASSWORD") or None,
            sentinel_password=env_str("REDIS_SENTINEL_PASSWORD") or None,
            socket_timeout=env_float("REDIS_SOCKET_TIMEOUT", 0.5),
            failover_wait_s=wait,
        )

    @property
    def sentinel_kwargs(self) -> dict[str, Any]:
        """How to talk to the sentinels themselves (never the master's password)."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
        }
        if self.sentinel_password:
            kwargs["password"] = self.sentinel_password
        return kwargs


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ImproperlyConfigured(
            f"REDIS_SENTINELS must be a comma-separated list of host:port, and {item.strip()!r} is not"
        )
    return host.strip("[]"), int(port)


# --- settings-time: the caches and the broker ----------------------------------------------------
def cache_location(config: SentinelConfig | None, url: str) -> str:
    """django-redis' LOCATION: the URL, or (Sentinel) the master's name as the URL's host, which
    django-redis' SentinelConnectionFactory asks the sentinels about."""
    return f"redis://{config.master}/{config.db}" if config else url


def cache_options(config: SentinelConfig | None) -> dict[str, Any]:
    """django-redis OPTIONS that make a cache alias reach Redis through Sentinel (none without)."""
    if config is None:
        return {}
    options: dict[str, Any] = {
        "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
        "SENTINELS": list(config.sentinels),
        "SENTINEL_KWARGS": config.sentinel_kwargs,
    }
    if config.password:
        options["PASSWORD"] = config.password
    return options


def broker_url(config: SentinelConfig) -> str:
    """kombu's Sentinel transport URL: one `sentinel://` URL per sentinel, `;`-separated, each
    carrying the master's password and database (the master name is a transport option)."""
    auth = f":{quote(config.password, safe='')}@" if config.password else ""
    return ";".join(f"sentinel://{auth}{_netloc(host, port)}/{config.db}" for host, port in config.sentinels)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def broker_transport(url: str) -> str | None:
    """The kombu transport for a broker URL: ours (one client per channel, dspex_site.broker)
    for Redis, directly or through Sentinel; kombu's own for anything else."""
    if url.startswith(("redis://", "rediss://")):
        return "dspex_site.broker:Transport"
    if url.startswith("sentinel://"):
        return "dspex_site.broker:SentinelTransport"
    return None


def broker_transport_options(config: SentinelConfig | None) -> dict[str, Any]:
    """What kombu's Sentinel channel needs besides the URL: the master's name and how to reach
    the sentinels."""
    if config is None:
        return {}
    return {"master_name": config.master, "sentinel_kwargs": config.sentinel_kwargs}


# --- run-time: clients ----------------------------------------------------------------------------
_lock = threading.Lock()
_clients: dict[tuple[int, str], redis.Redis] = {}
_sentinels: dict[tuple[int, SentinelConfig], Sentinel] = {}


def _config() -> SentinelConfig | None:
    from django.conf import settings

    return settings.REDIS_SENTINEL


def make_sentinel(config: SentinelConfig) -> Sentinel:
    """A redis-py Sentinel manager for the configured sentinels."""
    return Sentinel(
        list(config.sentinels),
        sentinel_kwargs=config.sentinel_kwargs,
        socket_timeout=config.socket_timeout,
        socket_connect_timeout=config.socket_timeout,
    )


def make_client(config: SentinelConfig | None, url: str, timeout: float) -> redis.Redis:
    """A new redis-py client: to the Sentinel master when `config` is given, else to `url`."""
    if config is None:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return _sentinel(config).master_for(
        config.master,
        db=config.db,
        password=config.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )


def _sentinel(config: SentinelConfig) -> Sentinel:
    key = (os.getpid(), config)  # a forked child makes its own: sockets never cross a fork
    with _lock:
        found = _sentinels.get(key)
        if found is None:
            found = _sentinels[key] = make_sentinel(config)
        return found


def client(url: str | None = None) -> redis.Redis:
    """A redis-py client (thread-safe, pooled, kept per process) for Redis users that are not
    caches: the Sentinel master (REDIS_SENTINELS), else `REDIS_URL`'s server. `url` names the
    broker's Redis when CELERY_BROKER_URL is a plain `redis://` URL of its own."""
    from django.conf import settings

    config = _config()
    if url is not None and not url.startswith("sentinel://"):
        config = None  # a broker of its own, not the Sentinel master
    target = "" if config else (url or settings.REDIS_URL)
    key = (os.getpid(), target)
    with _lock:
        found = _clients.get(key)
    if found is not None:
        return found
    made = make_client(config, target, settings.REDIS_SOCKET_TIMEOUT)
    with _lock:
        return _clients.setdefault(key, made)


def describe() -> dict[str, Any]:
    """Which Redis this process talks to, for readiness and /metrics: the mode, the master's
    address (Sentinel: as the sentinels name it now) and, with Sentinel, the master's config
    epoch (it grows by one at every failover) and how many sentinels answered. Raises when the
    master cannot be found or does not answer a PING."""
    from django.conf import settings

    config = _config()
    if config is None:
        parsed = urlparse(settings.REDIS_URL)
        client().ping()
        return {"mode": "single", "address": f"{parsed.hostname}:{parsed.port or 6379}"}
    sentinel = _sentinel(config)
    state: dict[str, Any] = {}
    answering = 0
    for node in sentinel.sentinels:
        try:
            found: dict[str, Any] = node.sentinel_master(config.master)  # type: ignore[assignment]  # a dict for one name
        except (redis.ConnectionError, redis.TimeoutError):
            continue
        except redis.ResponseError as exc:  # the sentinel does not monitor that name
            raise RuntimeError(f"sentinel does not know master {config.master!r}: {exc}") from exc
        answering += 1
        # The highest epoch is the latest failover's view (a sentinel may not have heard yet).
        if not state or int(found.get("config-epoch", 0)) > int(state.get("config-epoch", 0)):
            state = found
    if not answering:
        raise RuntimeError(f"no sentinel of {len(config.sentinels)} answers (REDIS_SENTINELS)")
    address = f"{state['ip']}:{state['port']}"
    if state.get("is_sdown") or state.get("is_odown"):
        raise RuntimeError(f"master {config.master!r} at {address} is down; a failover is due")
    client().ping()
    return {
        "mode": "sentinel",
        "master_name": config.master,
        "address": address,
        "config_epoch": int(state.get("config-epoch", 0)),
        "sentinels_answering": answering,
        "sentinels": len(config.sentinels),
    }


def reset() -> None:
    """Forget the clients this process made (tests that change the settings)."""
    with _lock:
        _clients.clear()
        _sentinels.clear()
