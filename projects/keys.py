"""API keys: issue, look up, check and revoke (README, "API keys").

A key is `dsx_<8 characters>_<43 characters>`: 256 random bits after a public prefix. Only its
SHA-256 digest is stored (`ApiKey.digest`): the key is random, so a slow password hash would
add nothing but latency, and a copy of the database lets nobody authenticate. The prefix
(`dsx_` and the 8 characters after it) is stored in clear to tell keys apart; it is no secret.

The hot path reads a key by its digest from a per-process cache (`dspex_site.local_cache`,
`DSPEX_LOCAL_CACHE_S`, default 1 s): a revoke evicts it in the process that made it at once and
in every other web process and worker within that interval. Worker-side work started with a key
(queued executions, batches, optimization runs) checks the key again when it runs (`check`), so
work queued by a key revoked meanwhile is refused (`key_revoked`) rather than run.
"""

import copy
import hashlib
import secrets
import string
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from dspex_site.errors import DomainError
from dspex_site.local_cache import LocalCache
from projects.models import ApiKey, Membership, Project

SCOPES: tuple[str, ...] = tuple(ApiKey.Scope.values)
PREFIX = "dsx_"
_ALPHABET = string.ascii_letters + string.digits
# last_used_at is written at most this often per key and process: a write per request would
# double the hot path's database work for a figure nobody reads to the second.
LAST_USED_EVERY_S = 60.0


class KeyRefused(DomainError):
    """A key that no longer works: revoked or expired (worker-side checks raise this)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_secret() -> tuple[str, str]:
    """(key, prefix) of a fresh key."""
    prefix = PREFIX + "".join(secrets.choice(_ALPHABET) for _ in range(8))
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes, deduplicated in canonical order; ValueError naming any unknown one."""
    given = list(scopes)
    unknown = [s for s in given if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}: use any of {', '.join(SCOPES)}")
    if not given:
        raise ValueError(f"at least one scope: any of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in given]


def service_account(project: Project) -> Any:
    """The project's service account: the user its service keys act as (created when missing).

    It has no password (it never signs in to the console) and is the project's admin member, so
    a service key does in its project what its scopes say and nothing elsewhere. Like GitLab's
    project access tokens' bot users, it is a row of its own so executions and audit events can
    point at it."""
    user_model = get_user_model()
    username = f"service.{project.name}"
    user, created = user_model.objects.get_or_create(username=username, defaults={"is_active": True})
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    Membership.objects.get_or_create(user=user, project=project, defaults={"role": Membership.Role.ADMIN})
    return user


@dataclass
class Issued:
    key: str  # the secret: shown once, never stored
    api_key: ApiKey


def issue(
    *,
    name: str,
    user: Any = None,
    project: Project | None = None,
    scopes: Iterable[str] = SCOPES,
    expires_at: datetime | None = None,
    service: bool = False,
    created_by: Any = None,
) -> Issued:
    """Store a new key (its digest and prefix) and return it with its secret, shown this once.

    `service=True` makes a project's service key (`project` required), acting as the project's
    service account (`service_account`) instead of a person."""
    checked = check_scopes(scopes)
    with transaction.atomic():
        if service:
            if project is None:
                raise ValueError("a service key belongs to a project")
            user = service_account(project)
        if user is None:
            raise ValueError("a key acts for a user, or is a project's service key")
        key, prefix = new_secret()
        api_key = ApiKey.objects.create(
            name=name,
            prefix=prefix,
            digest=digest(key),
            user=user,
            project=project,
            scopes=checked,
            service=service,
            expires_at=expires_at,
            created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
        )
    return Issued(key, api_key)


def facts(api_key: ApiKey) -> dict[str, Any]:
    """What the audit trail records of a key: everything but its secret (never known here)."""
    return {
        "prefix": api_key.prefix,
        "name": api_key.name,
        "user": api_key.user.username,
        "project": api_key.project.name if api_key.project is not None else None,
        "scopes": list(api_key.scopes),
        "service": api_key.service,
        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
    }


def revoke(api_key: ApiKey) -> bool:
    """Revoke the key (False when it already was). Every process refuses it within
    `DSPEX_LOCAL_CACHE_S`; this one at once (the save signal evicts it)."""
    if api_key.revoked_at is not None:
        return False
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked_at"])
    return True


# --- the hot path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """What a key authenticates as: its row, and its user carrying the key (`user.api_key`), so
    `projects.access` narrows the user's projects and kinds to the key's."""

    api_key: ApiKey
    user: Any


by_digest: LocalCache[Principal | None] = LocalCache("api_keys")
_state: LocalCache[tuple[datetime | None, datetime | None, str]] = LocalCache("api_key_state")
_last_used: dict[int, float] = {}
_last_used_lock = threading.Lock()


def _load(key_digest: str) -> Principal | None:
    api_key = ApiKey.objects.select_related("user").filter(digest=key_digest).first()
    if api_key is None:
        return None
    user = copy.copy(api_key.user)
    user.api_key = api_key  # type: ignore[attr-defined]  # read by projects.access.key_of
    return Principal(api_key, user)


def lookup(key: str) -> Principal | None:
    """The principal of a presented key (revoked and expired ones included: `refusal` says), or
    None when no key has this digest. Unknown keys are not cached: each costs a query."""
    key_digest = digest(key)
    principal = by_digest.get(key_digest, lambda: _load(key_digest))
    if principal is None:
        by_digest.evict(key_digest)
    return principal


def refusal(revoked_at: datetime | None, expires_at: datetime | None, prefix: str) -> KeyRefused | None:
    if revoked_at is not None:
        return KeyRefused("key_revoked", f"API key {prefix}… was revoked.")
    if expires_at is not None and expires_at <= timezone.now():
        return KeyRefused("key_expired", f"API key {prefix}… expired at {expires_at.isoformat()}.")
    return None


def touch(api_key: ApiKey) -> None:
    """Record that the key was used, at most once per `LAST_USED_EVERY_S` per process."""
    now = time.monotonic()
    with _last_used_lock:
        if now - _last_used.get(api_key.pk, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        _last_used[api_key.pk] = now
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())


def check(api_key_id: int | None) -> None:
    """Worker side: raise KeyRefused when the key that started this work is revoked or expired
    (read at most once per `DSPEX_LOCAL_CACHE_S` per process)."""
    if api_key_id is None:
        return

    def load() -> tuple[datetime | None, datetime | None, str]:
        row = ApiKey.objects.filter(pk=api_key_id).values_list("revoked_at", "expires_at", "prefix").first()
        return row if row is not None else (timezone.now(), None, f"#{api_key_id}")  # deleted: as revoked

    revoked_at, expires_at, prefix = _state.get(api_key_id, load)
    refused = refusal(revoked_at, expires_at, prefix)
    if refused is not None:
        raise refused


def key_of(request: Any) -> ApiKey | None:
    """The API key a request authenticated with, or None (console session, no key)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiKey) else None


def key_of_user(user: Any) -> ApiKey | None:
    """The API key an authenticated user object carries (`Principal.user`), or None."""
    return getattr(user, "api_key", None)


def evict(api_key: ApiKey) -> None:
    by_digest.evict(api_key.digest)
    _state.evict(api_key.pk)


def clear() -> None:
    by_digest.clear()
    _state.clear()
