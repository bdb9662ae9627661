"""The API's JSON renderer: orjson for the answers clients parse, DRF's encoder for the rest.

DRF's `JSONRenderer` encodes with the standard library (`json.dumps` and a Python `default`
per non-JSON value); orjson encodes the same data several times faster, which matters on
`execute`, where the answer carries the whole trace. The output is DRF's, value for value:
datetimes, decimals, lazy strings and anything else orjson does not encode natively go
through DRF's own encoder (`DRFJSONEncoder.default`). An indented answer (`?indent=` /
`Accept: ...; indent=`), or data orjson refuses (integers beyond 64 bits), falls back to
DRF's renderer. drf-orjson-renderer does the same job but is not pinned by anything here and
does not keep DRF's datetime format; this is the whole of it.
"""

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder as DRFJSONEncoder

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_default = DRFJSONEncoder().default


class ORJSONRenderer(JSONRenderer):
    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if data is not None and self.get_indent(accepted_media_type or "", renderer_context or {}) is None:
            try:
                return orjson.dumps(data, default=_default, option=_OPTIONS)
            except (TypeError, orjson.JSONEncodeError):
                pass  # e.g. an integer beyond 64 bits: DRF's encoder takes it
        return super().render(data, accepted_media_type, renderer_context)


def dumps(data: Any) -> bytes:
    """`data` as the API's JSON (what `ORJSONRenderer` writes), for answers built without DRF."""
    return ORJSONRenderer().render(data)
