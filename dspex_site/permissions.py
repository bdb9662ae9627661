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
"""

import logging
from typing import Any

from rest_framework.exceptions import NotFound
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

from dspex_site.roles import EDIT, READ, RUN
from projects import access

logger = logging.getLogger(__name__)

# Endpoints that start or stop work (spend provider money) rather than edit stored objects.
RUN_ACTIONS = {"execute", "cancel"}
RUN_VIEWS = {"OptimizeView"}
RUN_BASENAMES = {"batch"}


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
        return access.allows_somewhere(user, required_permission(request, view))

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        user = request.user
        project_id = access.project_id_of(obj)
        if not access.sees(user, project_id):
            raise NotFound()
        return access.allows(user, project_id, required_permission(request, view))


class TokenRateThrottle(UserRateThrottle):
    """Requests per authenticated user (one DRF token each), counted in the default cache (Redis).

    Fails open: a Redis outage must not turn every API call into a 500.
    """

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:
            logger.warning("API throttle unavailable, allowing the request: %s", type(exc).__name__)
            return True
