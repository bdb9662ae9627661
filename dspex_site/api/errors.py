"""API-layer errors: refusals of the API itself (an unknown cache name, a bad query parameter, a
body over the size limit), answered in the one error shape of `dspex_site.api.handler`."""

from rest_framework import exceptions, status


class APIError(exceptions.APIException):
    """An API error with an explicit status, stable code and optional per-path errors."""

    def __init__(self, status_code: int, code: str, detail: str, errors: list[dict] | None = None):
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.error_code = code
        self.errors = errors or []


class PayloadTooLarge(APIError):
    def __init__(self, size: int, limit: int):
        super().__init__(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            f"Request body is {size} bytes; the limit is {limit} bytes (DSPEX_MAX_INPUT_BYTES).",
        )
