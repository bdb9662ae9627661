"""REST API of projects (`GET/POST /api/v1/projects/`, `POST /api/v1/projects/{id}/members/`) and
the pieces every project-owned endpoint uses: the scoped viewset mixin, the `project` field of
programs, datasets and corpora, and related fields that only see the caller's projects."""

from typing import Any, cast

from django.contrib.auth import get_user_model
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.roles import EDIT, MANAGE
from monitoring import audit
from projects import access
from projects.models import Membership, Project


def _user(field: serializers.Field) -> Any:
    request = field.context.get("request")
    return getattr(request, "user", None)


class VisibleRelatedField(serializers.PrimaryKeyRelatedField):
    """A reference by id to a row of the caller's projects only: a row of another project is
    answered exactly as an id that does not exist ("Invalid pk ... object does not exist")."""

    def __init__(self, *, project_path: str = "project", **kwargs: Any) -> None:
        self.project_path = project_path
        super().__init__(**kwargs)

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        assert queryset is not None  # every use passes one
        if queryset.model is Project:
            ids = access.visible_ids(_user(self))
            return queryset if ids is None else queryset.filter(id__in=ids)
        return access.visible(queryset, _user(self), self.project_path)


class ProjectOwned(serializers.ModelSerializer):
    """A serializer of a project's own rows (programs, datasets, corpora): `project` is the
    project's id, optional on create (the caller's project, `access.current_project`), fixed after."""

    project = VisibleRelatedField(queryset=Project.objects.all(), required=False)

    def validate_project(self, project: Project) -> Project:
        if self.instance is not None and project.pk != self.instance.project_id:
            raise serializers.ValidationError(
                "A project's rows stay in it: create a copy in the other project."
            )
        return project

    def create(self, validated_data: dict[str, Any]) -> Any:
        request = self.context.get("request")
        project = validated_data.get("project") or access.current_project(request)
        if project is None:
            raise serializers.ValidationError(
                {"project": ["Required: you belong to several projects, none of them `default`."]}
            )
        if not access.allows(getattr(request, "user", None), project.pk, EDIT):
            raise PermissionDenied("Your role in this project does not allow creating in it.")
        validated_data["project"] = project
        return super().create(validated_data)


class ProjectScoped:
    """A viewset over rows of projects: its queryset holds only the caller's (`project_path`:
    the lookup from the row to its project), so another project's row is a 404."""

    project_path = "project"

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()  # type: ignore[misc]
        return access.visible(queryset, self.request.user, self.project_path)  # type: ignore[attr-defined]


# --- projects and members ---------------------------------------------------------------------


class MembershipSerializer(serializers.ModelSerializer):
    user: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Membership
        fields = ["user", "role", "created_at"]


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="The caller's role here (null for superusers)")

    class Meta:
        model = Project
        fields = ["id", "name", "role", "created_at"]
        read_only_fields = ["created_at"]

    def get_role(self, obj: Project) -> str | None:
        return access.roles(_user(self)).get(obj.pk)


class MemberRequestSerializer(serializers.Serializer):
    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=get_user_model().objects.filter(is_active=True),
        help_text="The username",
    )
    role = serializers.ChoiceField(choices=Membership.Role.choices)


class ProjectViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """The caller's projects. Creating one needs `MANAGE` somewhere (an admin of a project, or a
    superuser); the creator becomes its admin. Project admins add and change members."""

    queryset = Project.objects.all()
    serializer_class = ProjectSerializer
    parser_classes = [LimitedJSONParser]
    filterset_class = None
    required_kinds = {"create": MANAGE, "members": MANAGE}

    def get_queryset(self) -> Any:
        ids = access.visible_ids(self.request.user)
        queryset = super().get_queryset()
        return queryset if ids is None else queryset.filter(id__in=ids)

    def perform_create(self, serializer: "serializers.BaseSerializer[Project]") -> None:
        with transaction.atomic():
            project = serializer.save()
            user = self.request.user
            if not user.is_superuser:
                Membership.objects.create(user=cast(Any, user), project=project, role=Membership.Role.ADMIN)
            audit.record("create", project, channel="api", request=self.request)

    @extend_schema(
        request=MemberRequestSerializer, responses={200: MembershipSerializer, 201: MembershipSerializer}
    )
    @action(detail=True, methods=["post"])
    def members(self, request: Request, pk: str | None = None) -> Response:
        """Add a member with a role, or change a member's role (project admins and superusers)."""
        project = self.get_object()
        body = MemberRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        user, role = body.validated_data["user"], body.validated_data["role"]
        with transaction.atomic():
            membership, created = Membership.objects.update_or_create(
                user=user, project=project, defaults={"role": role}
            )
            audit.record(
                "member",
                project,
                channel="api",
                request=request,
                changes={"user": user.username, "role": role},
            )
        return Response(
            MembershipSerializer(membership).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
