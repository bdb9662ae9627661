"""Lag-tolerant API reads from the read replica (`DATABASE_REPLICA_URL`).

A viewset with `ReplicaReads` runs the actions in `replica_actions` (its list page by default)
on `dspex_site.db.read_alias()`: the replica while it answers within `DSPEX_REPLICA_MAX_LAG_S`,
else the primary. Detail pages, writes and claims stay on the primary, so a client that has just
made a row always finds it. A replica failing under a list request marks it down in this
process and the request is answered again from the primary.
"""

from typing import Any

from django.db import DatabaseError
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site import db


class ReplicaReads:
    replica_actions: tuple[str, ...] = ("list",)
    _on_primary = False

    _read_from: str | None = None  # the alias this request's read went to

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()  # type: ignore[misc]
        if self.action in self.replica_actions and not self._on_primary:  # type: ignore[attr-defined]
            self._read_from = db.read_alias()
            return queryset.using(self._read_from)
        return queryset

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().list(request, *args, **kwargs)  # type: ignore[misc]
        except DatabaseError as exc:
            if self._on_primary or self._read_from != db.REPLICA_ALIAS:
                raise
            db.replica_failed(exc)
            self._on_primary = True
            return super().list(request, *args, **kwargs)  # type: ignore[misc]
