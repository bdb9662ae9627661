"""One error shape for the whole API: `{"code", "detail", "errors": [{"path", "message"}]}`.

Clients branch on `code` (stable), show `detail` to people, and point at the offending field
with `errors[].path` (a JSON path such as `pipeline.steps[1].inputs.context`).
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import Model, QuerySet
from django.http import Http404
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from programs.spec import ProgramSpecError


class APIError(exceptions.APIException):
    """An API error with an explicit status, stable code and optional per-path errors."""

    def __init__(self, status_code: int, code: str, detail: str, errors: list[dict] | None = None):
        super().__init__(detail=detail, code=code)
        self.status_code = status_code
        self.error_code = code
        self.errors = errors or []


def referenced_row(queryset: QuerySet, pk: Any, *, path: str, code: str, detail: str, problem: str) -> Model:
    """The row a request body names by id at `path`, or a 400 pointing at that path."""
    row = queryset.filter(id=pk).first()
    if row is None:
        raise APIError(status.HTTP_400_BAD_REQUEST, code, detail, [{"path": path, "message": problem}])
    return row


class StrictSerializer(serializers.Serializer):
    """Refuses unknown body fields, so a typo is an error rather than a silent default."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class PayloadTooLarge(APIError):
    def __init__(self, size: int, limit: int):
        super().__init__(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            "payload_too_large",
            f"Request body is {size} bytes; the limit is {limit} bytes (DSPEX_MAX_INPUT_BYTES).",
        )


class LimitedJSONParser(JSONParser):
    """JSON parser that refuses bodies over DSPEX_MAX_INPUT_BYTES before reading them."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        request = (parser_context or {}).get("request")
        limit = settings.DSPEX_MAX_INPUT_BYTES
        if request is not None:
            size = int(request.META.get("CONTENT_LENGTH") or 0)
            if size > limit:
                raise PayloadTooLarge(size, limit)
        return super().parse(stream, media_type, parser_context)


def spec_errors(exc: ProgramSpecError) -> list[dict]:
    return [{"path": e.path, "message": e.message} for e in exc.errors]


def spec_error_code(errors: list[dict]) -> str:
    """`invalid_input` when only the execution's input or variables are wrong, else `invalid_program`."""
    roots = {e["path"].split(".", 1)[0].split("[", 1)[0] for e in errors}
    if roots and roots <= {"input"}:
        return "invalid_input"
    if roots and roots <= {"variables", "input"}:
        return "invalid_variables"
    return "invalid_program"


def flatten_validation(detail: Any, prefix: str = "") -> list[dict]:
    """Turn DRF's nested ValidationError detail into a flat list of {path, message}."""
    out: list[dict] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key == "non_field_errors":
                out += flatten_validation(value, prefix)
            else:
                out += flatten_validation(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out += [{"path": prefix, "message": str(item)} for item in detail]
        else:
            for index, item in enumerate(detail):
                out += flatten_validation(item, f"{prefix}[{index}]")
    else:
        out.append({"path": prefix, "message": str(detail)})
    return out


CODE_BY_CLASS = {
    exceptions.ParseError: "malformed_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler producing the DSPex error shape."""
    if isinstance(exc, ProgramSpecError):
        errors = spec_errors(exc)
        code = spec_error_code(errors)
        detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:3]) or "Invalid program."
        if len(errors) > 3:
            detail += f" (and {len(errors) - 3} more)"
        return Response(
            {"code": code, "detail": detail, "errors": errors}, status=status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(0, settings.DSPEX_MAX_INPUT_BYTES)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, APIError):
        body = {"code": exc.error_code, "detail": str(exc.detail), "errors": exc.errors}
    elif isinstance(exc, exceptions.ValidationError):
        errors = flatten_validation(exc.detail)
        first = f"{errors[0]['path']}: {errors[0]['message']}" if errors else "Invalid request."
        body = {"code": "invalid", "detail": first, "errors": errors}
    else:
        code = next((c for cls, c in CODE_BY_CLASS.items() if isinstance(exc, cls)), "error")
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        body = {"code": code, "detail": str(detail), "errors": []}
    response.data = body
    return response
