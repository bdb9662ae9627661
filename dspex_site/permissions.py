"""API access by project role (projects.access): viewers read, operators run and edit, project
admins also manage members, superusers everything.

Two checks, in DRF's two places:

* **the view** (`has_permission`): the user holds the request's kind (`required_permission`) in
  at least one of their projects. A user in no project (an "outsider"), or a viewer asking to
  run or edit, is refused with 403 before any object is looked at; that says nothing about
  any object.
* **the object** (`has_object_permission`): the object's project must be one of the user's,
  else **404** (exactly as for an id that does not exist; views also filter their querysets by
  `projects.access.visible`), and the user's role there must grant the kind, else 403.

Site groups (Viewers, Operators, a site's own with the same permissions) cap the roles of the
users who have any (projects.access): a Viewers member is read-only in every project.

A request with an API key also needs the key's scope for the endpoint (`required_scope`), which
follows the request's kind: `read` for every read; `execute` to run (execute, batches, cancelling
executions and batches); `optimize` to start or cancel optimization runs; `admin` for every change
of stored objects (programs, datasets, corpora, schedules, applying a result, rollback, caches,
projects, members, keys). Refused with 403
`scope_required` before any object is looked at; a key bound to a project sees nothing else
(projects.access), so another project's object is still a 404.
"""

import logging
import time
from typing import Any

from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

from dspex_site.roles import EDIT, READ, RUN
from dspex_site.shared_redis import FailOpenRedis
from projects import access, keys

logger = logging.getLogger(__name__)

# Endpoints that start or stop work (spend provider money) rather than edit stored objects.
RUN_ACTIONS = {"execute", "cancel"}
RUN_VIEWS = {"OptimizeView"}
RUN_BASENAMES = {"batch"}
# Of the RUN requests, those of the `optimize` scope (the rest are `execute`).
OPTIMIZE_VIEWS = {"OptimizeView"}
OPTIMIZE_BASENAMES = {"optimization"}


def required_permission(request: Request, view: Any) -> str:
    declared = getattr(view, "required_kinds", {}).get(getattr(view, "action", None))
    if declared is not None:  # a view that says what its actions need (projects: MANAGE)
        return declared
    if request.method in SAFE_METHODS:
        return READ
    action = getattr(view, "action", None)
    if (
        action in RUN_ACTIONS
        or type(view).__name__ in RUN_VIEWS
        or (getattr(view, "basename", None) in RUN_BASENAMES and action == "create")
    ):
        return RUN
    return EDIT


def required_scope(request: Request, view: Any) -> str:
    """The API key scope a request needs (see the module docstring)."""
    declared = getattr(view, "required_scopes", {}).get(getattr(view, "action", None))
    if declared is not None:
        return declared
    kind = required_permission(request, view)
    if kind == READ:
        return "read"
    if kind != RUN:
        return "admin"
    if type(view).__name__ in OPTIMIZE_VIEWS or getattr(view, "basename", None) in OPTIMIZE_BASENAMES:
        return "optimize"
    return "execute"


def check_scope(request: Request, view: Any) -> None:
    key = keys.key_of(request)
    if key is None:
        return
    scope = required_scope(request, view)
    if scope not in key.scopes:
        raise ScopeRequired(scope, key.scopes)


class ScopeRequired(PermissionDenied):
    def __init__(self, scope: str, scopes: list[str]) -> None:
        super().__init__(
            f"This API key's scopes ({', '.join(scopes)}) do not include `{scope}`, which this needs.",
            code="scope_required",
        )


class RolePermission(BasePermission):
    """Authenticated, holding the request's kind in some project, and, for an object, in its
    project (404 when the object's project is not the user's)."""

    message = (
        "Your role does not allow this (viewers read, operators run and edit, project admins manage members)."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        check_scope(request, view)
        return access.allows_somewhere(user, required_permission(request, view))

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        user = request.user
        project_id = access.project_id_of(obj)
        if not access.sees(user, project_id):
            raise NotFound()
        return access.allows(user, project_id, required_permission(request, view))


# A sliding-window counter (two fixed windows, the previous one weighted by how much of it still
# overlaps the last `window` seconds): one round trip and two small integers per identity,
# instead of the timestamp list DRF's throttle reads, pickles and writes back on every request.
# KEYS: current window's counter, previous window's; ARGV: limit, previous window's weight,
# expiry (ms). Returns {allowed, previous count, current count (without a refused request)}.
_SLIDING_WINDOW = """
local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local current = redis.call('INCR', KEYS[1])
if current == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if previous * tonumber(ARGV[2]) + current > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return {0, previous, current - 1}
end
return {1, previous, current}
"""


class TokenRateThrottle(UserRateThrottle):
    """Requests per API key (or per user, for console sessions) in a sliding window, counted in the
    default cache's Redis in one round trip (`_SLIDING_WINDOW`); `Retry-After` says when the
    next request would pass. Without Redis (the embedded mode's in-process cache) DRF's own
    throttle counts. Fails open: a Redis outage must not turn every API call into a 500 (the
    shared fail-open client then skips Redis for `DSPEX_CACHE_RETRY_AFTER_S`).
    """

    redis = FailOpenRedis("default", "throttle")
    _wait: float | None = None
    num_requests: int  # set by DRF's __init__ from the rate
    duration: int

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        """Per API key (each key its own allowance; a user's keys do not share one), else per user."""
        key = keys.key_of(request)
        if key is not None:
            return self.cache_format % {"scope": self.scope, "ident": f"key{key.pk}"}
        return super().get_cache_key(request, view)

    def allow_request(self, request: Request, view: Any) -> bool:
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        client = self.redis.raw()
        if client is None:
            return self._drf_allow_request(request, view)
        if not self.redis.available():
            return True
        window = float(self.duration)
        now = time.time()
        index = int(now // window)
        elapsed = now - index * window
        weight = 1.0 - elapsed / window
        keys = [f"{self.cache.make_key(key)}:{index}", f"{self.cache.make_key(key)}:{index - 1}"]
        try:
            allowed, previous, current = self.redis.script(client, _SLIDING_WINDOW)(
                keys=keys, args=[self.num_requests, weight, int(window * 2000)], client=client
            )
        except Exception as exc:
            self.redis.failed("throttle", exc)
            logger.warning("API throttle unavailable, allowing the request: %s", type(exc).__name__)
            return True
        if allowed:
            return True
        # When the next request passes: once the previous window's weight has decayed enough,
        # or (this window alone full) once this window's count, as the next one's previous,
        # has decayed enough.
        limit = self.num_requests
        room = limit - current - 1
        if room >= 0 and previous:
            wait = window * (1.0 - room / previous) - elapsed
        else:
            wait = window - elapsed + (window * max(0.0, 1.0 - (limit - 1) / current) if current else 0.0)
        self._wait = max(0.001, wait)
        return False

    def _drf_allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            logger.warning("API throttle unavailable, allowing the request: %s", type(exc).__name__)
            return True

    def wait(self) -> float | None:
        return self._wait if self._wait is not None else super().wait()
