"""The API's errors as exceptions: each carries the answer's `code`, `detail` and located `errors`
(`[{"path", "message"}]`), and its HTTP `status`; the class says what kind of refusal it is."""

from typing import Any


class DSPexError(Exception):
    """Any error answer of the API (or a transport failure: `status` 0, `code` "unreachable")."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status, self.code, self.detail = status, code, detail
        self.errors = errors or []
        self.retry_after = retry_after
        located = "; ".join(f"{e.get('path')}: {e.get('message')}" for e in self.errors[:5])
        super().__init__(
            f"{status} {code}: {detail}" + (f" ({located})" if located and located not in detail else "")
        )


class BadRequest(DSPexError):
    """400/413/415: the request is wrong; `errors` says where."""


class AuthenticationFailed(DSPexError):
    """401: no key, an unknown key, or `key_expired` / `key_revoked`."""


class PermissionDenied(DSPexError):
    """403: the role or the key's scopes (`scope_required`) do not allow it."""


class NotFound(DSPexError):
    """404: no such object (or one of a project the key does not see)."""


class Conflict(DSPexError):
    """409: the object's state refuses it (an archived program, a finished run)."""


class BudgetExceeded(DSPexError):
    """402 `budget_exceeded`: a spend limit is used up."""


class RateLimited(DSPexError):
    """429 (throttled, `rate_limited`): `retry_after` says when to come back."""


class Unavailable(DSPexError):
    """502/503: a provider or a dependency failed or refused for now."""


BY_STATUS: dict[int, type[DSPexError]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    402: BudgetExceeded,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    415: BadRequest,
    422: BadRequest,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
}


def error_for(status: int, body: Any, retry_after: float | None) -> DSPexError:
    """The exception of an error answer (its body is the API's one error shape, or anything)."""
    if isinstance(body, dict) and "code" in body:
        code, detail, errors = str(body["code"]), str(body.get("detail", "")), body.get("errors") or []
    else:
        code, detail, errors = f"http_{status}", str(body)[:500], []
    return BY_STATUS.get(status, DSPexError)(status, code, detail, errors, retry_after)
