"""Token authentication with the token row served from a per-process cache (dspex_site.local_cache).

DRF's `TokenAuthentication` reads the token and its user on every request; this one reads them
at most once per `DSPEX_LOCAL_CACHE_S` per process. A token deleted (revoked) or a user changed
(deactivated, regrouped) in this process is evicted at once by the signals below; every other
process stops accepting a revoked token within `DSPEX_LOCAL_CACHE_S`. Unknown keys are never
cached: each costs a query, as before.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from dspex_site.local_cache import LocalCache

tokens: LocalCache[Token] = LocalCache("tokens")


def _load(key: str) -> Token:
    try:
        return Token.objects.select_related("user").get(key=key)
    except Token.DoesNotExist:
        raise exceptions.AuthenticationFailed("Invalid token.") from None


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        token = tokens.get(key, lambda: _load(key))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token


def _token_changed(sender: Any, instance: Token, **kwargs: Any) -> None:
    tokens.evict(instance.key)


def _accounts_changed(sender: Any, **kwargs: Any) -> None:
    # A user's activity, superuser flag, groups or a group's permissions: rare, so every cached
    # token of this process goes rather than working out whose.
    tokens.clear()


def connect_signals() -> None:
    user_model = get_user_model()
    post_save.connect(_token_changed, sender=Token, dispatch_uid="local-cache-token-save")
    post_delete.connect(_token_changed, sender=Token, dispatch_uid="local-cache-token-delete")
    for model in (user_model, Group):
        post_save.connect(_accounts_changed, sender=model, dispatch_uid=f"local-cache-{model.__name__}-save")
        post_delete.connect(_accounts_changed, sender=model, dispatch_uid=f"local-cache-{model.__name__}-del")
    for through in (
        user_model.groups.through,
        user_model.user_permissions.through,
        Group.permissions.through,
    ):
        m2m_changed.connect(_accounts_changed, sender=through, dispatch_uid=f"local-cache-{through.__name__}")
