"""Who may do what in which project: the one place that answers it (README, "Projects").

A user's roles are their memberships (`{project_id: role}`), read at most once per
`DSPEX_LOCAL_CACHE_S` per process (`dspex_site.local_cache`) and evicted in this process at once
when a membership or a project is saved or deleted, so a warm request reads nothing.

What a request may do in a project (`allows`):

* **superusers**: everything, in every project;
* everyone else: what their role there grants (`ROLE_GRANTS`: viewer reads; operator also runs
  and edits; admin also manages the members), **capped by their site groups when they have
  any**: a user whose groups (Viewers, Operators, or a site's own) grant some of `READ`, `RUN`,
  `EDIT` keeps only those in every project, so a Viewers member stays read-only even as a
  project's operator. A user with no such group permission is governed by memberships alone.

An object of a project the user is not a member of does not exist for them: views filter it out
of their querysets (`visible`) and answer 404, never 403.

A request made with an API key (`projects.keys`: its user carries it as `user.api_key`) is
narrowed further: to the key's project when it names one (superusers included), and to the kinds
its scopes grant (`SCOPE_KINDS`; `dspex_site.permissions` checks the exact scope per endpoint).
"""

from collections.abc import Iterable
from typing import Any

from django.db.models import QuerySet
from django.db.models.signals import post_delete, post_save

from dspex_site.local_cache import LocalCache
from dspex_site.roles import EDIT, MANAGE, READ, RUN
from projects.models import DEFAULT_PROJECT, Membership, Project, forget_default

ROLE_GRANTS: dict[str, frozenset[str]] = {
    Membership.Role.VIEWER: frozenset({READ}),
    Membership.Role.OPERATOR: frozenset({READ, RUN, EDIT}),
    Membership.Role.ADMIN: frozenset({READ, RUN, EDIT, MANAGE}),
}
CAPPED = (READ, RUN, EDIT)  # the kinds site groups grant and therefore cap
# What an API key's scopes let its user do at most (the exact scope per endpoint is checked by
# dspex_site.permissions.required_scope): `execute` and `optimize` both start paid work.
SCOPE_KINDS: dict[str, frozenset[str]] = {
    "read": frozenset({READ}),
    "execute": frozenset({RUN}),
    "optimize": frozenset({RUN}),
    "admin": frozenset({EDIT, MANAGE}),
}


def key_of(user: Any) -> Any:
    """The API key the user authenticated with in this request, or None."""
    return getattr(user, "api_key", None)


def _key_kinds(key: Any) -> frozenset[str]:
    return frozenset().union(*(SCOPE_KINDS.get(scope, frozenset()) for scope in key.scopes))


_roles: LocalCache[dict[int, str]] = LocalCache("project_roles")


def roles(user: Any) -> dict[int, str]:
    """`{project_id: role}` of the user's memberships (cached per process; see the docstring)."""
    if user is None or not user.is_authenticated:
        return {}
    mine = _roles.get(
        user.pk, lambda: dict(Membership.objects.filter(user_id=user.pk).values_list("project_id", "role"))
    )
    key = key_of(user)
    if key is not None and key.project_id is not None:
        return {key.project_id: mine[key.project_id]} if key.project_id in mine else {}
    return mine


def _cap(user: Any) -> frozenset[str] | None:
    """The kinds the user's site groups grant, or None when they grant none (no cap)."""
    granted = frozenset(kind for kind in CAPPED if user.has_perm(kind))
    return granted or None


def grants(user: Any, project_id: int | None) -> frozenset[str]:
    """The kinds of request (`READ`, `RUN`, `EDIT`, `MANAGE`) the user may make in the project."""
    if user is None or not user.is_authenticated:
        return frozenset()
    key = key_of(user)
    if key is not None and key.project_id is not None and project_id != key.project_id:
        return frozenset()
    if user.is_superuser:
        allowed = ROLE_GRANTS[Membership.Role.ADMIN]
    else:
        role = roles(user).get(project_id) if project_id is not None else None
        if role is None:
            return frozenset()
        allowed = ROLE_GRANTS[role]
        cap = _cap(user)
        allowed = allowed if cap is None else allowed & (cap | {MANAGE})
    return allowed if key is None else allowed & _key_kinds(key)


def allows(user: Any, project_id: int | None, kind: str) -> bool:
    return kind in grants(user, project_id)


def allows_somewhere(user: Any, kind: str) -> bool:
    """Whether some project of the user's allows `kind` (the view-level check, before any object)."""
    if user is None or not user.is_authenticated:
        return False
    key = key_of(user)
    if user.is_superuser:
        if key is None:
            return True
        if key.project_id is not None:
            return allows(user, key.project_id, kind)
        return kind in _key_kinds(key)
    return any(allows(user, project_id, kind) for project_id in roles(user))


def visible_ids(user: Any) -> list[int] | None:
    """The ids of the projects the user sees, or None for all of them (superusers)."""
    if getattr(user, "is_superuser", False):
        key = key_of(user)
        return None if key is None or key.project_id is None else [key.project_id]
    return sorted(roles(user))


def administered(user: Any) -> list[int]:
    """The ids of the projects the user is an admin of (their audit trails are theirs to read)."""
    return sorted(p for p in roles(user) if allows(user, p, MANAGE))


def sees(user: Any, project_id: int | None) -> bool:
    ids = visible_ids(user)
    return ids is None or project_id in ids


def visible(queryset: QuerySet, user: Any, path: str = "project") -> QuerySet:
    """`queryset` narrowed to the user's projects (`path`: the lookup to the project, such as
    `program__project`). No query of its own when the user's roles are cached."""
    ids = visible_ids(user)
    return queryset if ids is None else queryset.filter(**{f"{path}_id__in": ids})


def project_id_of(obj: Any) -> int | None:
    """The project an object belongs to: its own `project_id`, or its program's, dataset's or
    corpus's (executions, batches, runs, results, schedules, budgets, versions, examples...)."""
    if isinstance(obj, Project):
        return obj.pk
    if hasattr(obj, "project_id"):
        return obj.project_id
    for parent in ("program", "dataset", "corpus"):
        if getattr(obj, f"{parent}_id", None) is not None:
            return project_id_of(getattr(obj, parent))
    return None


def current_project(request: Any) -> Project | None:
    """The project a request works in when its body names none.

    The project of the API key the request came with, when it names one; else the user's only
    project; else the `default` project if they see it (superusers always do; it is created when
    missing); else None (the caller must name one).
    """
    user = getattr(request, "user", None)
    key = key_of(user)
    if key is not None and key.project_id is not None:
        return Project.objects.filter(id=key.project_id).first()
    ids = visible_ids(user)
    if ids is not None and len(ids) == 1:
        return Project.objects.filter(id=ids[0]).first()
    if ids is None:
        return Project.objects.get_or_create(name=DEFAULT_PROJECT)[0]
    return Project.objects.filter(name=DEFAULT_PROJECT, id__in=ids).first()


def default_project() -> Project:
    """The `default` project (created when missing): where rows without an owner go (commands,
    the demo, the data migration)."""
    return Project.objects.get_or_create(name=DEFAULT_PROJECT)[0]


def resolve(name: str | None, user: Any = None) -> Project:
    """The project a management command's `--project <name>` names (default: `default`)."""
    project = Project.objects.filter(name=name or DEFAULT_PROJECT).first()
    if project is None:
        if name in (None, DEFAULT_PROJECT):
            return default_project()
        raise Project.DoesNotExist(f"no project {name!r}")
    return project


def evict(user_ids: Iterable[int] | None = None) -> None:
    if user_ids is None:
        _roles.clear()
        return
    for user_id in user_ids:
        _roles.evict(user_id)


def _membership_changed(sender: Any, instance: Membership, **kwargs: Any) -> None:
    evict([instance.user_id])


def _project_changed(sender: Any, **kwargs: Any) -> None:
    evict()
    forget_default()


def connect_signals() -> None:
    post_save.connect(_membership_changed, sender=Membership, dispatch_uid="local-cache-membership-save")
    post_delete.connect(_membership_changed, sender=Membership, dispatch_uid="local-cache-membership-del")
    post_delete.connect(_project_changed, sender=Project, dispatch_uid="local-cache-project-del")
