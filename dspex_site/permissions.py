"""API access by role (dspex_site.roles): viewers read, operators run and edit, superusers all.

The roles are the `Viewers` and `Operators` groups (`dspex_site.roles`), checked through the
permissions they grant rather than group names, so a site can make other groups with the same
permissions. An authenticated user in neither group (an "outsider") gets 403 everywhere.
"""

import logging
from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

from dspex_site.roles import EDIT, READ, RUN

logger = logging.getLogger(__name__)

# Endpoints that start or stop work (spend provider money) rather than edit stored objects.
RUN_ACTIONS = {"execute", "cancel"}
RUN_VIEWS = {"OptimizeView"}
RUN_BASENAMES = {"batch"}


def required_permission(request: Request, view: Any) -> str:
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
    """Authenticated, and holding the permission the request's kind needs (read, run or edit)."""

    message = "Your account's role does not allow this (viewers read, operators run and edit)."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if user.is_superuser:  # no permission queries for superusers
            return True
        return user.has_perm(required_permission(request, view))


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
