"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu's Redis channel builds a new `redis.Redis` object for every publish (and every other
synchronous command: `conn_or_acquire`), on the channel's own connection pool. Building one
fills its table of ~170 response callbacks, which cost more CPU than the LPUSH that publishes
the message: about a quarter of a publish. A `redis.Redis` is thread-safe and holds no
connection of its own (it borrows one from the pool per command), so one per channel serves
every command of that channel; a new channel (kombu reconnecting after an error) or a new pool
(after a fork) makes a new one.

Used for `redis://` and `rediss://` brokers (`CELERY_BROKER_TRANSPORT` in settings); any other
broker keeps its own transport.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _sync_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        held = self._sync_client
        # The channel drops its pool after a fork or on close: a new pool, a new client.
        if held is None or held.connection_pool is not self.pool:
            held = self._sync_client = self._create_client()  # type: ignore[attr-defined]  # not in kombu-stubs
        yield held


class Transport(kombu_redis.Transport):
    Channel = Channel
