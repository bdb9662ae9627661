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


class ApiKey(models.Model):
    """An API key (README, "API keys"): the secret is shown once, at issue, and stored only as its
    SHA-256 digest; `prefix` (the key's first characters) tells keys apart in lists, logs and the
    audit trail. A key acts for its `user` (a person, or a project's service account for service
    keys), only in `project` when it names one (else in all the user's projects), and only for
    its `scopes`. Keys are revoked, never deleted: executions and audit events point at them."""

    class Scope(models.TextChoices):
        READ = "read"
        EXECUTE = "execute"
        OPTIMIZE = "optimize"
        ADMIN = "admin"

    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, unique=True, help_text="The key's first characters, shown in lists"
    )
    digest = models.CharField(
        max_length=64, unique=True, help_text="SHA-256 of the key (hex); the key itself is never stored"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_keys",
        help_text="The one project the key works in; empty: every project of its user",
    )
    scopes = models.JSONField(default=list, help_text="Any of read, execute, optimize, admin")
    service = models.BooleanField(default=False, help_text="A project's service key (no person behind it)")
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "api_keys"
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


def api_key_reference(help_text: str) -> "models.ForeignKey":
    """The `api_key` column of work started with a key (executions, batches, optimization runs):
    nullable, not indexed (read by id only), kept when the key row goes."""
    return models.ForeignKey(
        ApiKey,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        help_text=help_text,
    )
