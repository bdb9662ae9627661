"""The OpenAPI schema documents every error an operation can answer, in the one error shape.

`ErrorDocumentingSchema` (REST_FRAMEWORK's DEFAULT_SCHEMA_CLASS) adds to each operation the
4xx/5xx responses that follow from what the view is made of: a request body (400 invalid or
malformed, 413 too large, 415 wrong media type), query filters (400), path parameters (404),
authentication and permissions (401, 403), throttling (429, with Retry-After). Refusals of the
domain layer that only some views let through (402 budget, 409 archived program, 503 queue
unavailable, ...) are declared with `@raises(BudgetExceeded, ...)` on the view method and get
their status from `dspex_site.api.handler.STATUS_BY_ERROR`, so the table and the schema cannot
disagree. Where a view already documents a body for the same status (the execution `execute`
returns with 402/409/503), the response is either: `oneOf` the two schemas.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers
from rest_framework.permissions import AllowAny

from dspex_site.api.handler import status_for
from dspex_site.errors import DomainError

View = TypeVar("View", bound=Callable[..., Any])
RAISES_ATTR = "_dspex_raises"


def raises(*errors: type[DomainError] | tuple[int, str]) -> Callable[[View], View]:
    """Declare the domain errors (or `(status, description)` API refusals) a view method lets
    through, for the schema. Put it above `@action`/`@api_view`."""

    def mark(view: View) -> View:
        target = getattr(view, "cls", view)  # an @api_view function: its generated APIView class
        setattr(target, RAISES_ATTR, (*getattr(target, RAISES_ATTR, ()), *errors))
        return view

    return mark


class KeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """API keys in the schema: `Authorization: Bearer <key>` (`Token <key>` works too)."""

    target_class = "dspex_site.authentication.KeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema: Any) -> dict:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`POST /api/v1/keys/`, `manage.py dspex_create_key`), as "
            "`Authorization: Bearer <key>`; `Authorization: Token <key>` is accepted too.",
        }


class ErrorItemSerializer(serializers.Serializer):
    path = serializers.CharField(help_text="JSON path of the offending part, e.g. `input.question`")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer."""

    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `budget_exceeded`")
    detail = serializers.CharField(help_text="A sentence for people")
    # DRF moves declared fields off the class, so this does not shadow `Serializer.errors` at
    # runtime; the stubs see only the class attribute.
    errors = ErrorItemSerializer(many=True)  # type: ignore[assignment]


RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "string"}, "description": "Seconds until a retry may succeed"}
}
PAGINATION = {"limit", "offset"}


class ErrorDocumentingSchema(AutoSchema):
    error_serializer: Any = ErrorSerializer  # the body of the error responses it documents

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        errors = self._error_responses(operation)
        ref = self.resolve_serializer(self.error_serializer, "response").ref
        media_types = self.map_renderers("media_type")
        for code, descriptions in sorted(errors.items()):
            key = str(code)
            response = operation["responses"].setdefault(key, {"description": ""})
            description = " ".join(descriptions)
            previous = response.get("description")
            response["description"] = f"{previous}; or: {description}" if previous else description
            content = response.setdefault("content", {})
            for media_type in media_types:
                existing = content.get(media_type, {}).get("schema")
                schema = ref if existing is None else {"oneOf": [existing, ref]}
                content[media_type] = {"schema": schema}
            if code in (429, 503):
                response.setdefault("headers", {}).update(RETRY_AFTER)
        operation["responses"] = dict(sorted(operation["responses"].items()))
        return operation

    def _declared(self) -> tuple[Any, ...]:
        action = getattr(self.view, "action", None)
        handler = getattr(self.view, action or self.method.lower(), None)
        return getattr(handler, RAISES_ATTR, ()) or getattr(self.view, RAISES_ATTR, ())

    def _error_responses(self, operation: dict[str, Any]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}

        def add(code: int, description: str) -> None:
            if description not in found.setdefault(code, []):
                found[code].append(description)

        parameters = operation.get("parameters", [])
        if "requestBody" in operation:
            add(400, "The body is malformed or invalid: `errors` names each offending field.")
            add(413, "The body is larger than the service accepts (`payload_too_large`).")
            add(415, "The body's media type is not one of those listed.")
        if any(p["in"] == "query" and p["name"] not in PAGINATION for p in parameters):
            add(400, "A query parameter is invalid.")
        if any(p["in"] == "path" for p in parameters):
            add(404, "No such object (`not_found`).")
        permissions = self.view.get_permissions()
        if self.view.get_authenticators() and not all(isinstance(p, AllowAny) for p in permissions):
            add(401, "No or an invalid token (`not_authenticated`, `authentication_failed`).")
            add(403, "The account's role does not allow this (`permission_denied`).")
        if self.view.get_throttles():
            add(429, "Too many requests (`throttled`); retry after Retry-After seconds.")
        for error in self._declared():
            if isinstance(error, tuple):
                add(error[0], error[1])
            else:
                doc = (error.__doc__ or "").strip().splitlines()[0] if error.__doc__ else error.__name__
                codes = ", ".join(f"`{code}`" for code in _codes(error))
                add(status_for(error), f"{codes}: {doc}")
        return found


def _codes(error: type[DomainError]) -> list[str]:
    """The codes an error class and its subclasses answer with (AdmissionError: one per refusal)."""
    found, pending = [], [error]
    while pending:
        cls = pending.pop(0)
        if cls.code not in found and cls.code != DomainError.code:
            found.append(cls.code)
        pending += cls.__subclasses__()
    return found
