"""The gunicorn worker class of the ASGI web processes (`DSPEX_WEB_SERVER=asgi` in
`dspex_site/gunicorn_conf.py`): uvicorn's, without the ASGI lifespan protocol (Django has none:
uvicorn would log that it is unsupported at every start)."""

from typing import Any, ClassVar

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": "auto", "lifespan": "off"}
