"""Projects and memberships: the tenancy unit of DSPex (README, "Projects")."""

from django.conf import settings
from django.db import models

from dspex_site.local_cache import LocalCache

DEFAULT_PROJECT = "default"


class Project(models.Model):
    """A team's space: its programs, datasets and corpora, and everything that hangs off them."""

    name = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "projects"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one project: viewers read, operators also run and edit, admins also
    manage the members."""

    class Role(models.TextChoices):
        VIEWER = "viewer"
        OPERATOR = "operator"
        ADMIN = "admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "project_memberships"
        ordering = ["project", "user"]
        constraints = [models.UniqueConstraint(fields=["user", "project"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} {self.role} of {self.project}"


_default_id: "LocalCache[int]" = LocalCache("default_project")


def default_project_id() -> int:
    """The `default` project's id, created when missing: the model default of `project` on
    programs, datasets and corpora, for rows made outside the API (commands, the demo, scripts).
    The API passes the caller's project (`projects.access.current_project`). Cached per process
    like the hot path's rows, so building a model instance costs no query when warm."""

    def load() -> int:
        return Project.objects.get_or_create(name=DEFAULT_PROJECT)[0].pk

    return _default_id.get(DEFAULT_PROJECT, load)


def forget_default(sender: object = None, **kwargs: object) -> None:
    _default_id.clear()
