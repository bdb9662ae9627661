"""gunicorn settings for `make run`, the Procfile and docker: `gunicorn -c dspex_site/gunicorn_conf.py`."""

import os
from typing import Protocol

bind = f"{os.environ.get('DSPEX_HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
accesslog = "-"
wsgi_app = "dspex_site.wsgi"


class _Worker(Protocol):
    """What this hook reads of gunicorn's worker (gunicorn ships no type hints)."""

    pid: int


def child_exit(server: object, worker: _Worker) -> None:
    """Drop a dead worker's live gauges from the shared Prometheus directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
