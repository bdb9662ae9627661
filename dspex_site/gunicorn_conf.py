"""gunicorn settings for `make run`, the Procfile and docker: `gunicorn -c dspex_site/gunicorn_conf.py`.

`DSPEX_WEB_SERVER` chooses the serving model (docs/streaming.md "Serving", measured by
`bench/streams.py`): `wsgi` (the default) runs gunicorn's gthread workers (`WEB_THREADS` threads
each) serving `dspex_site.wsgi`, where every open stream holds one of those threads; `asgi` runs
`WEB_CONCURRENCY` uvicorn worker processes serving `dspex_site.asgi`, where each request's view
runs in a thread of its own and an open stream is a coroutine holding no thread.
"""

import os
from typing import Protocol

bind = f"{os.environ.get('DSPEX_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
SERVERS = {
    "asgi": ("dspex_site.asgi_worker.Worker", "dspex_site.asgi"),
    "wsgi": ("gthread", "dspex_site.wsgi"),
}
server = os.environ.get("DSPEX_WEB_SERVER", "wsgi").strip().lower() or "wsgi"
if server not in SERVERS:
    raise SystemExit(f"DSPEX_WEB_SERVER must be one of {', '.join(SERVERS)}, not {server!r}")
worker_class, wsgi_app = SERVERS[server]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))  # gthread (wsgi) only
accesslog = "-"


class _Worker(Protocol):
    """What this hook reads of gunicorn's worker (gunicorn ships no type hints)."""

    pid: int


def child_exit(server: object, worker: _Worker) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
