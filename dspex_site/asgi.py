"""ASGI entry point, what the web processes serve with `DSPEX_WEB_SERVER=asgi`
(`dspex_site/gunicorn_conf.py`, uvicorn workers): `gunicorn -k dspex_site.asgi_worker.Worker
dspex_site.asgi`.

Each request's middleware chain and sync view run in one hop to one of `WEB_THREADS` (8)
long-lived view threads (`OneHopASGIHandler`); a streamed answer (executions.streaming) is then a
coroutine on the event loop, so an open stream holds no web thread (docs/streaming.md "Serving").

`ViewSlots` lets at most `WEB_THREADS` requests of the process run their view at once, the
others waiting on the event loop (a burst of hundreds of requests would otherwise queue inside
the executor with their bodies read). A slot is given back when the response starts, so an open
stream holds none.

A streamed run's threads come and go, and a run holds its database connection through its LM
calls unless a pool takes it back (`dspex_site.db.release`): an ASGI process therefore takes its
connections from the in-process pool (`DSPEX_DB_POOL_MAX`, 20 unless set), so a few hundred open
streams need no more than the pool; with the pool turned off (`DSPEX_DB_POOL_MAX=0`) every
connection is closed at the end of its request or run.
"""

import asyncio
import os
from typing import Any

import django

from dspex_site.asgi_handler import OneHopASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DSPEX_DB_POOL_MAX", "20")
if os.environ["DSPEX_DB_POOL_MAX"].strip() in ("", "0"):
    os.environ["DATABASE_CONN_MAX_AGE"] = "0"


class ViewSlots:
    """At most `slots` HTTP requests run their view at once; a slot is held until the response
    starts (`http.response.start`), so a stream gives its slot back once its headers are sent."""

    def __init__(self, app: Any, slots: int) -> None:
        self.app, self.slots = app, slots
        self._free: asyncio.Semaphore | None = None  # made on the worker's own event loop

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._free is None:
            self._free = asyncio.Semaphore(self.slots)
        free = self._free
        await free.acquire()
        held = True

        async def started(message: dict) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                free.release()
            await send(message)

        try:
            await self.app(scope, receive, started)
        finally:
            if held:
                free.release()


django.setup(set_prefix=False)


def share_caches() -> None:
    """Django keeps its cache backends per context (asgiref's `Local`), and every request's
    context is a copy of this (the main) thread's: made here, before the server starts, the
    backends Django's own code reaches through `caches` (readiness, the console's sessions) are
    the process's rather than one set per request. DSPex's own Redis users (the shared caches,
    admission, throttling) take theirs from `dspex_site.shared_redis.backend_of` instead."""
    from django.conf import settings
    from django.core.cache import caches

    for alias in settings.CACHES:
        caches[alias]


share_caches()

_threads = max(1, int(os.environ.get("WEB_THREADS", "8")))
application = ViewSlots(OneHopASGIHandler(_threads), _threads)
