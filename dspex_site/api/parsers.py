"""Request parsers: JSON bodies refused over a size limit before they are read."""

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework.parsers import JSONParser

from dspex_site.api.errors import PayloadTooLarge


class LimitedJSONParser(JSONParser):
    """JSON parser that refuses bodies over `limit_setting` (DSPEX_MAX_INPUT_BYTES) before reading them."""

    limit_setting = "DSPEX_MAX_INPUT_BYTES"

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        request = (parser_context or {}).get("request")
        limit = getattr(settings, self.limit_setting)
        if request is not None:
            size = int(request.META.get("CONTENT_LENGTH") or 0)
            if size > limit:
                raise PayloadTooLarge(size, limit)
        return super().parse(stream, media_type, parser_context)
