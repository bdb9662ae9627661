"""`OneHopASGIHandler`, the Django ASGI handler `dspex_site.asgi` serves (kept apart from that
entry point, which sets environment defaults and loads Django when imported)."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections


class OneHopASGIHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain built synchronously and run, view
    included, in one hop to one of `threads` long-lived view threads. Django's own builds an
    async chain for ASGI: every middleware that is only sync (WhiteNoise's, ours) switches
    threads on the way in and out, and every `MiddlewareMixin` hook run in async mode is one
    more `sync_to_async` hop; and it runs each request in a thread made for that request, whose
    database connection then comes from the pool and goes back at its end. Here a view thread's
    connection is looked after as a gthread worker's is: `close_old_connections` before and
    after each request, in that thread (with the pool `dspex_site.asgi` turns on, that hands it
    back). A streamed response's async iterator is still consumed on the event loop
    (`bench/streams.py`, docs/streaming.md "Serving")."""

    def __init__(self, threads: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="view")
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        chain: Callable[[Any], Any] = self._middleware_chain  # type: ignore[has-type]

        def run(request: Any) -> Any:
            close_old_connections()
            try:
                return chain(request)
            finally:
                close_old_connections()

        self._middleware_chain = sync_to_async(run, thread_sensitive=False, executor=self.executor)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        # No per-request ThreadSensitiveContext (a thread made per request): what Django still
        # runs thread-sensitively (its request_started/request_finished receivers) goes to
        # asgiref's one shared thread and touches no connection of a view thread.
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)
