"""gunicorn settings for `make run`, the Procfile and docker: `gunicorn -c dspex_site/gunicorn_conf.py`.

`DSPEX_WEB_SERVER` chooses the serving model (docs/streaming.md "Serving", measured by
`bench/streams.py`): `asgi` (the default) runs `WEB_CONCURRENCY` uvicorn worker processes serving
`dspex_site.asgi`, where each request's middleware and view run in one of `WEB_THREADS` view
threads and an open stream is a coroutine holding no thread; `wsgi` runs gunicorn's gthread
workers (`WEB_THREADS` threads each) serving `dspex_site.wsgi`, a little cheaper per ordinary
request, where every open stream holds one of those threads for its whole length.
"""

import os
from typing import Protocol

bind = f"{os.environ.get('DSPEX_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
SERVERS = {
    "asgi": ("dspex_site.asgi_worker.Worker", "dspex_site.asgi"),
    "wsgi": ("gthread", "dspex_site.wsgi"),
}
server = os.environ.get("DSPEX_WEB_SERVER", "asgi").strip().lower() or "asgi"
if server not in SERVERS:
    raise SystemExit(f"DSPEX_WEB_SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
worker_class, wsgi_app = SERVERS[server]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))  # gthread (wsgi); asgi reads it in dspex_site/asgi.py
accesslog = "-"


class _Worker(Protocol):
    """What this hook reads of gunicorn's worker (gunicorn ships no type hints)."""

    pid: int


def child_exit(server: object, worker: _Worker) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
