"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` object for every publish (and every other
synchronous command: `conn_or_acquire`), on the channel's own connection pool. Building one
fills its table of ~170 response callbacks, which cost more CPU than the LPUSH that publishes
the message: about a quarter of a publish. A `redis.Redis` is thread-safe and holds no
connection of its own (it borrows one from the pool per command), so one per channel serves
every command of that channel; a new channel (kombu reconnecting after an error) or a new pool
(after a fork) makes a new one.

Used for `redis://` and `rediss://` brokers, and `sentinel://` ones (REDIS_SENTINELS:
`SentinelTransport`), as `CELERY_BROKER_TRANSPORT` in settings says (dspex_site.redis_ha); any
other broker keeps its own transport.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class _OneClientPerChannel:
    """`conn_or_acquire` with one held client per channel (mixed into kombu's channels)."""

    _sync_client: Any = None
    _pool: Any

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        held = self._sync_client
        # The channel drops its pool after a fork or on close: a new pool, a new client.
        if held is None or held.connection_pool is not self._pool:
            transport = getattr(self, "connection", None)
            if transport is None or getattr(transport, "client", None) is None:
                # Closed with its connection (kombu clears both) — e.g. the worker's consumer
                # restoring or acking the messages of a channel whose Redis just died: nothing
                # can reach Redis through it. Say so as a connection error, which the consumer
                # recovers from by reconnecting (through Sentinel: to the new master), not as
                # the AttributeError kombu would raise, which stops the consumer for good.
                raise redis.ConnectionError("the broker channel is closed")
            held = self._sync_client = self._create_client()  # type: ignore[attr-defined]  # not in kombu-stubs
        yield held


class Channel(_OneClientPerChannel, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_OneClientPerChannel, kombu_redis.SentinelChannel):
    """The same through Sentinel: the channel's pool is redis-py's SentinelConnectionPool, which
    asks the sentinels for the master on every new connection, so the held client follows a
    failover without being replaced."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
