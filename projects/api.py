"""REST API of projects (`GET/POST /api/v1/projects/`, `POST /api/v1/projects/{id}/members/`), of
API keys (`GET/POST /api/v1/keys/`, `POST /api/v1/keys/{id}/revoke/`) and
the pieces every project-owned endpoint uses: the scoped viewset mixin, the `project` field of
programs, datasets and corpora, and related fields that only see the caller's projects."""

import copy
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api.parsers import LimitedJSONParser
from dspex_site.permissions import RolePermission, check_scope
from dspex_site.roles import EDIT, MANAGE
from monitoring import audit
from projects import access, keys
from projects.models import ApiKey, Membership, Project


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

    def get_validators(self) -> list:
        # Not DRF's validator of the (name, project) constraint: it would make `project`
        # required; `validate` checks the name in the project the row goes to instead.
        return []

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        name = attrs.get("name")
        if name is None:
            return attrs
        if self.instance is not None:
            project_id = self.instance.project_id
        else:
            project = attrs.get("project") or access.current_project(self.context.get("request"))
            project_id = project.pk if project is not None else None
        model: Any = self.Meta.model  # every subclass has one
        taken = model._default_manager.filter(project_id=project_id, name=name)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if project_id is not None and taken.exists():
            raise serializers.ValidationError({"name": [self._taken(name)]})
        return attrs

    def _taken(self, name: str) -> str:
        model: Any = self.Meta.model
        noun = model._meta.verbose_name
        return f"A {noun} named '{name}' already exists in this project."

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
        try:
            with transaction.atomic():  # a concurrent create of the same name: the constraint says
                return super().create(validated_data)
        except IntegrityError:
            model: Any = self.Meta.model
            if model._default_manager.filter(project=project, name=validated_data.get("name")).exists():
                raise serializers.ValidationError({"name": [self._taken(validated_data["name"])]}) from None
            raise


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
        minting = keys.key_of(self.request)
        if minting is not None and minting.project_id is not None:
            raise PermissionDenied("A project's API key works in that project only: it creates no projects.")
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


# --- API keys ---------------------------------------------------------------------------------


class KeySerializer(serializers.ModelSerializer):
    user: serializers.SlugRelatedField = serializers.SlugRelatedField(slug_field="username", read_only=True)
    project = VisibleRelatedField(
        queryset=Project.objects.all(),
        required=False,
        allow_null=True,
        help_text="The one project the key works in (default: the caller's key's project, else none: "
        "every project of the user)",
    )
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ApiKey.Scope.choices),
        required=False,
        help_text="Any of read, execute, optimize, admin (default: all four)",
    )
    service = serializers.BooleanField(
        required=False,
        default=False,
        help_text="A project's service key, acting as its service account rather than the caller",
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "project",
            "scopes",
            "service",
            "user",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "created_at",
        ]
        read_only_fields = ["prefix", "last_used_at", "revoked_at", "created_at"]

    def validate_expires_at(self, value: Any) -> Any:
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate_scopes(self, value: list[str]) -> list[str]:
        try:
            return keys.check_scopes(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        request = self.context["request"]
        user = request.user
        minting = keys.key_of(request)
        project = attrs.get("project")
        if project is None and minting is not None and minting.project_id is not None:
            project = attrs["project"] = minting.project
        scopes = attrs.setdefault(
            "scopes", list(minting.scopes) if minting is not None else list(keys.SCOPES)
        )
        if minting is not None:
            # A key mints no more than it holds: its project, its scopes.
            if minting.project_id is not None and (project is None or project.pk != minting.project_id):
                raise serializers.ValidationError(
                    {"project": ["A project's key issues keys of that project only."]}
                )
            beyond = [scope for scope in scopes if scope not in minting.scopes]
            if beyond:
                raise serializers.ValidationError(
                    {"scopes": [f"Beyond the scopes of the key making this request: {', '.join(beyond)}."]}
                )
        if attrs.get("service"):
            if project is None:
                raise serializers.ValidationError({"project": ["A service key belongs to a project."]})
            if not access.allows(user, project.pk, MANAGE):
                raise PermissionDenied("Only the project's admins issue its service keys.")
        elif project is not None:
            held = access.grants(_without_key(user), project.pk)
            lacking = [scope for scope in scopes if not access.SCOPE_KINDS[scope] & held]
            if lacking:
                raise serializers.ValidationError(
                    {"scopes": [f"Your role in project {project.name} does not allow: {', '.join(lacking)}."]}
                )
        return attrs


class IssuedKeySerializer(KeySerializer):
    key = serializers.CharField(read_only=True, help_text="The key itself: shown in this answer only")

    class Meta(KeySerializer.Meta):
        fields = [*KeySerializer.Meta.fields, "key"]


def _without_key(user: Any) -> Any:
    """The user as their role has them, without the narrowing of the key they came with."""
    if getattr(user, "api_key", None) is None:
        return user
    plain = copy.copy(user)
    plain.api_key = None
    return plain


class KeyPermission(RolePermission):
    """Keys are the caller's own or their projects' (the queryset says which: `KeyViewSet`), not
    rows of one project: a key without a project is no less visible to its user."""

    def has_permission(self, request: Request, view: Any) -> bool:
        """Authenticated, holding the key scope the request needs, and a member somewhere: what
        a new key may do is checked against the role in its project (`KeySerializer`)."""
        user = request.user
        if not user or not user.is_authenticated:
            return False
        check_scope(request, view)
        return user.is_superuser or bool(access.roles(user))

    def has_object_permission(self, request: Request, view: Any, obj: Any) -> bool:
        return True


class KeyViewSet(
    mixins.ListModelMixin, mixins.CreateModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """API keys: the caller's own, and those of the projects they are an admin of (superusers:
    all). The secret is in the creation's answer only; lists show the prefix. Revoked keys stay
    listed (with `revoked_at`); every process refuses them within a second."""

    queryset = ApiKey.objects.select_related("user", "project")
    serializer_class = KeySerializer
    permission_classes = [KeyPermission]
    parser_classes = [LimitedJSONParser]
    filterset_class = None
    required_scopes = {"create": "admin", "revoke": "admin"}

    def get_queryset(self) -> Any:
        user = self.request.user
        queryset = super().get_queryset()
        minting = keys.key_of(self.request)
        if minting is not None and minting.project_id is not None:
            queryset = queryset.filter(project_id=minting.project_id)
        if user.is_superuser:
            return queryset
        administered = access.administered(user)
        return queryset.filter(Q(user_id=user.pk, service=False) | Q(project_id__in=administered))

    @extend_schema(request=KeySerializer, responses={201: IssuedKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = KeySerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        data = body.validated_data
        with transaction.atomic():
            issued = keys.issue(
                name=data["name"],
                user=request.user,
                project=data.get("project"),
                scopes=data["scopes"],
                expires_at=data.get("expires_at"),
                service=data.get("service", False),
                created_by=request.user,
            )
            audit.record(
                "issue_key",
                issued.api_key,
                channel="api",
                request=request,
                changes=keys.facts(issued.api_key),
            )
        answer = IssuedKeySerializer(issued.api_key).data
        answer["key"] = issued.key
        return Response(answer, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: KeySerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str | None = None) -> Response:
        """Revoke the key: every web process and worker refuses it within a second (work it
        queued and that has not started is refused with `key_revoked`). Revoking twice is a no-op."""
        api_key = self.get_object()
        with transaction.atomic():
            if keys.revoke(api_key):
                audit.record(
                    "revoke_key", api_key, channel="api", request=request, changes=keys.facts(api_key)
                )
        return Response(KeySerializer(api_key, context=self.get_serializer_context()).data)
