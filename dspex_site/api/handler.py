"""One error shape for the whole API: `{"code", "detail", "errors": [{"path", "message"}]}`.

Clients branch on `code` (stable), show `detail` to people, and point at the offending field
with `errors[].path` (a JSON path such as `pipeline.steps[1].inputs.context`).

The domain layer raises plain exceptions (`dspex_site.errors.DomainError`); `STATUS_BY_ERROR`
is the one place that says which HTTP status each of them answers with. `APIError`
(`dspex_site.api.errors`) is for refusals of the API layer itself.
"""

import math
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from dspex_site.api.errors import APIError, PayloadTooLarge
from dspex_site.errors import DomainError, NotText, QueueUnavailable
from executions.batches import BatchTooLarge
from executions.feedback import FeedbackRefused
from executions.runner import ProgramNotRunnable
from executions.sessions import SessionBusy, SessionExpired
from llm.budgets import BudgetExceeded
from llm.quotas import RateLimitExceeded
from llm.resilience import AdmissionError
from optimization.datasets import DatasetError
from optimization.dspy_state import StateDoesNotFit
from optimization.from_executions import NameTaken, NoExamples
from optimization.results import ResultDoesNotFit
from optimization.runner import RunRequestError
from programs.releases import CanaryConflict, ReleaseInvalid
from programs.spec import ProgramSpecError
from projects.keys import KeyRefused

# Domain error -> HTTP status (the most specific class in an exception's MRO wins). The codes
# are the errors' own (`BudgetExceeded.code` is `budget_exceeded`, ...).
STATUS_BY_ERROR: dict[type[DomainError], int] = {
    NotText: status.HTTP_400_BAD_REQUEST,
    KeyRefused: status.HTTP_401_UNAUTHORIZED,  # revoked/expired (the API raises AuthenticationFailed)
    ProgramSpecError: status.HTTP_400_BAD_REQUEST,
    BatchTooLarge: status.HTTP_400_BAD_REQUEST,
    DatasetError: status.HTTP_400_BAD_REQUEST,
    NoExamples: status.HTTP_400_BAD_REQUEST,
    NameTaken: status.HTTP_400_BAD_REQUEST,
    StateDoesNotFit: status.HTTP_400_BAD_REQUEST,
    RunRequestError: status.HTTP_400_BAD_REQUEST,
    BudgetExceeded: status.HTTP_402_PAYMENT_REQUIRED,
    SessionExpired: status.HTTP_404_NOT_FOUND,
    ProgramNotRunnable: status.HTTP_409_CONFLICT,
    SessionBusy: status.HTTP_409_CONFLICT,
    FeedbackRefused: status.HTTP_409_CONFLICT,  # feedback on an execution not finished yet
    ResultDoesNotFit: status.HTTP_409_CONFLICT,
    ReleaseInvalid: status.HTTP_400_BAD_REQUEST,
    CanaryConflict: status.HTTP_409_CONFLICT,  # a canary already running (or none to finish)
    AdmissionError: status.HTTP_503_SERVICE_UNAVAILABLE,
    RateLimitExceeded: status.HTTP_429_TOO_MANY_REQUESTS,  # a project's or key's per-minute limit
    QueueUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def status_for(error: type[DomainError] | DomainError) -> int:
    """The HTTP status a domain error answers with (400 for one the table does not name)."""
    cls = error if isinstance(error, type) else type(error)
    found = (STATUS_BY_ERROR[c] for c in cls.__mro__ if c in STATUS_BY_ERROR)
    return next(found, status.HTTP_400_BAD_REQUEST)


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


def domain_error_response(exc: DomainError) -> Response:
    """The API's answer to a domain error: its status, code, summary and located problems."""
    body = {"code": exc.code, "detail": exc.summary(), "errors": exc.problems()}
    response = Response(body, status=status_for(exc))
    if exc.retry_after is not None:
        response["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler producing the DSPex error shape."""
    if isinstance(exc, DomainError):
        set_rollback()  # as DRF does for its own exceptions: nothing of a refused request is kept
        return domain_error_response(exc)
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
        own = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        if isinstance(own, str) and own != getattr(exc, "default_code", None):
            code = own  # raised with a code of its own (`key_expired`, `scope_required`)
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        body = {"code": code, "detail": str(detail), "errors": []}
    response.data = body
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """`handler404`: a URL no route matches (`/api/v1/programs/not-a-uuid/`) answers the API's
    error body under /api/, and Django's page elsewhere (the console)."""
    if request.path.startswith("/api/"):
        body = {"code": "not_found", "detail": f"No API endpoint at {request.path}.", "errors": []}
        return JsonResponse(body, status=404)
    return page_not_found(request, exception)
