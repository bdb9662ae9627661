"""Per-request context: a request id for logs and the X-Request-ID response header."""

import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from monitoring.logs import log_context


class RequestContextMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        # Accept a caller's id only if it is short and plain, so it cannot inject into logs.
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isalnum() else uuid.uuid4().hex
        with log_context(request_id=request_id):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response
