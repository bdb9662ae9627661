"""Write audit events from any channel (API, admin, management commands)."""

from typing import Any, Protocol

from monitoring.models import AuditEvent
from projects.access import project_id_of


class _Labelled(Protocol):
    @property
    def label(self) -> str: ...


class Audited(Protocol):
    """What an audit event is about: a model instance, or a stand-in with the same label and pk."""

    @property
    def _meta(self) -> _Labelled: ...

    @property
    def pk(self) -> object: ...


def client_ip(request: Any) -> str | None:
    """The caller's address; REMOTE_ADDR only, since X-Forwarded-For is client-controlled."""
    if request is None:
        return None
    return request.META.get("REMOTE_ADDR") or None


def record(
    action: str,
    obj: Audited,
    *,
    channel: str,
    user: Any = None,
    request: Any = None,
    changes: dict | None = None,
) -> AuditEvent:
    """Append one audit event for `action` on `obj`, in the project of `obj` (none for site-wide
    objects such as caches)."""
    if user is None and request is not None:
        user = getattr(request, "user", None)
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    return AuditEvent.objects.create(
        actor=user,
        actor_name=getattr(user, "username", "") if user else "",
        action=action,
        object_type=obj._meta.label,
        object_id=str(obj.pk),
        object_repr=str(obj)[:255],
        channel=channel,
        key_prefix=key.prefix if (key := getattr(user, "api_key", None)) is not None else "",
        ip=client_ip(request),
        changes=changes or {},
        project_id=project_id_of(obj),
    )


def diff(before: dict, after: dict) -> dict:
    """The fields that changed, as {field: {"from": old, "to": new}}."""
    return {
        key: {"from": before.get(key), "to": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }
