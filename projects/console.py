"""The console's side of projects: admin classes show and act on the user's projects only.

`ProjectScopedAdmin` narrows a model admin's queryset (lists, search, filters, actions, change
and delete pages, which all go through `get_queryset`) to the user's projects, so another
project's row is "doesn't exist", exactly as a missing one. The model permissions still come
from the site groups (the admin needs them); on top, changing or deleting a row needs `EDIT` in
its project, so a viewer of a project changes nothing there whatever their group.
"""

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from dspex_site.roles import EDIT, MANAGE, READ
from projects import access
from projects.models import Membership, Project

# Foreign keys whose choices a form offers: only the user's rows.
SCOPED_CHOICES = {"program": "project", "dataset": "project", "corpus": "project"}


class ProjectScopedAdmin(admin.ModelAdmin):
    project_path = "project"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return access.visible(super().get_queryset(request), request.user, self.project_path)

    def _allows(self, request: HttpRequest, obj: Any, kind: str) -> bool:
        return obj is None or access.allows(request.user, access.project_id_of(obj), kind)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) and self._allows(request, obj, READ)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._allows(request, obj, EDIT)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._allows(request, obj, EDIT)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and self.project_path == "project" and "project" not in fields:
            fields.append("project")  # a row stays in its project
        return fields

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        field = form.base_fields.get("project")
        if field is not None and obj is None:
            current = access.current_project(request)
            field.required = current is None  # left empty: the user's project (access.current_project)
            field.initial = current.pk if current is not None else None
        return form

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        if not change and self.project_path == "project":
            if not form.cleaned_data.get("project"):
                obj.project = access.current_project(request)
            if not access.allows(request.user, obj.project_id, EDIT):
                raise PermissionDenied
        super().save_model(request, obj, form, change)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "project":
            ids = [p for p in access.roles(request.user) if access.allows(request.user, p, EDIT)]
            projects = Project.objects.all()
            kwargs["queryset"] = projects if request.user.is_superuser else projects.filter(id__in=ids)
        elif db_field.name in SCOPED_CHOICES:
            kwargs["queryset"] = access.visible(
                db_field.related_model._default_manager.all(), request.user, SCOPED_CHOICES[db_field.name]
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ["user", "role", "created_at"]
    readonly_fields = ["created_at"]
    raw_id_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    """Projects and their members: superusers make projects; a project's admins manage its members."""

    list_display = ["name", "created_at"]
    search_fields = ["name"]
    inlines = [MembershipInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        ids = access.visible_ids(request.user)
        queryset = super().get_queryset(request)
        return queryset if ids is None else queryset.filter(id__in=ids)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return (
            request.user.is_active
            and request.user.is_staff
            and bool(request.user.is_superuser or access.roles(request.user))
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request) and (obj is None or access.sees(request.user, obj.pk))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return request.user.is_superuser or access.allows_somewhere(request.user, MANAGE)
        return access.allows(request.user, obj.pk, MANAGE)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


class VisibleRelatedFilter(admin.RelatedFieldListFilter):
    """A list filter by program, dataset, corpus or project offering the user's rows only (the
    stock filter lists every row of the table, other projects' names included)."""

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list:
        related = field.related_model._default_manager.all()
        if related.model is Project:
            ids = access.visible_ids(request.user)
            related = related if ids is None else related.filter(id__in=ids)
        else:
            related = access.visible(related, request.user, SCOPED_CHOICES.get(field.name, "project"))
        return [(row.pk, str(row)) for row in related]
