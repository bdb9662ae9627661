"""API key authentication: `Authorization: Bearer <key>` or `Token <key>` (README, "API keys").

The key's row and its user come from a per-process cache keyed by the key's SHA-256 digest
(`projects.keys`): a warm request reads nothing. A key revoked, a user changed (deactivated,
regrouped) in this process is evicted at once by the signals below; every other process stops
accepting a revoked key within `DSPEX_LOCAL_CACHE_S`. Expiry is checked on every request against
the cached row, so an expired key fails at its `expires_at` (`key_expired`), not a second later.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.utils.translation import gettext_lazy
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from projects import keys
from projects.models import ApiKey

SCHEMES = (b"bearer", b"token")


class KeyAuthentication(authentication.BaseAuthentication):
    """An API key in the `Authorization` header, as `Bearer` (preferred) or `Token`."""

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() not in SCHEMES:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                gettext_lazy("Invalid Authorization header: give `Bearer <key>`.")
            )
        try:
            key = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: the key is not text."
            ) from None
        return self.authenticate_credentials(key)

    def authenticate_credentials(self, key: str) -> tuple[Any, ApiKey]:
        principal = keys.lookup(key)
        if principal is None:
            raise exceptions.AuthenticationFailed("Invalid API key.")
        api_key, user = principal.api_key, principal.user
        refused = keys.refusal(api_key.revoked_at, api_key.expires_at, api_key.prefix)
        if refused is not None:
            raise exceptions.AuthenticationFailed(str(refused), code=refused.code)
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        keys.touch(api_key)
        return user, api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


def _key_changed(sender: Any, instance: ApiKey, **kwargs: Any) -> None:
    keys.evict(instance)


def _accounts_changed(sender: Any, **kwargs: Any) -> None:
    # A user's activity, superuser flag, groups or a group's permissions: rare, so every cached
    # key of this process goes rather than working out whose.
    keys.clear()


def connect_signals() -> None:
    user_model = get_user_model()
    post_save.connect(_key_changed, sender=ApiKey, dispatch_uid="local-cache-key-save")
    post_delete.connect(_key_changed, sender=ApiKey, dispatch_uid="local-cache-key-delete")
    for model in (user_model, Group):
        post_save.connect(_accounts_changed, sender=model, dispatch_uid=f"local-cache-{model.__name__}-save")
        post_delete.connect(_accounts_changed, sender=model, dispatch_uid=f"local-cache-{model.__name__}-del")
    for through in (
        user_model.groups.through,
        user_model.user_permissions.through,
        Group.permissions.through,
    ):
        m2m_changed.connect(_accounts_changed, sender=through, dispatch_uid=f"local-cache-{through.__name__}")
