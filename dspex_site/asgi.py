"""ASGI entry point, what the web processes serve (`dspex_site/gunicorn_conf.py`, uvicorn
workers): `gunicorn -k dspex_site.asgi_worker.Worker dspex_site.asgi`.

Django runs each request's sync view in a thread of that request's own; a streamed answer
(executions.streaming) is then a coroutine on the event loop, so an open stream holds no web
thread (docs/streaming.md "Serving").

Those per-request threads come and go: a persistent connection (`CONN_MAX_AGE` > 0) opened in
one would stay open after its thread is gone. An ASGI process therefore takes its connections
from the in-process pool (`DSPEX_DB_POOL_MAX`, 20 unless set); with the pool turned off
(`DSPEX_DB_POOL_MAX=0`) it closes each connection at the end of its request.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")
os.environ.setdefault("DSPEX_DB_POOL_MAX", "20")
if os.environ["DSPEX_DB_POOL_MAX"].strip() in ("", "0"):
    os.environ["DATABASE_CONN_MAX_AGE"] = "0"

application = get_asgi_application()
