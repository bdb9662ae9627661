"""Cognitive programs: DSPy pipelines stored as JSON, versioned on every change."""

import uuid
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models, transaction

from programs.spec import SpecError, validate_program
from projects.models import default_project_id


class CognitiveProgram(models.Model):
    """A DSPy program described by a pipeline spec (the README, "Programs").

    `version` is bumped whenever `pipeline` or `variables` change; each version is kept as a
    `ProgramVersion` so executions can say exactly what they ran and operators can roll back.
    """

    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        OPTIMIZING = "optimizing"
        ARCHIVED = "archived"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=255, help_text="Unique in its project")
    project = models.ForeignKey(
        "projects.Project",
        on_delete=models.PROTECT,
        related_name="programs",
        default=default_project_id,
        help_text='The project it belongs to (README, "Projects").',
    )
    description = models.TextField(blank=True)
    pipeline = models.JSONField()
    variables = models.JSONField(default=dict, blank=True)
    optimization_history = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT)
    version = models.PositiveIntegerField(default=1, editable=False)
    active_result = models.ForeignKey(
        "optimization.OptimizationResult",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Optimized parameters (DSPy state) executions run with; empty runs the plain program.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "cognitive_programs"
        ordering = ["name"]
        indexes = [models.Index(fields=["status"], name="idx_programs_status")]
        # Names are unique per project (README, "Projects"); the index also serves name lookups.
        constraints = [
            models.UniqueConstraint(fields=["name", "project"], name="uniq_program_name_per_project")
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Save, bumping `version` and snapshotting it when pipeline or variables changed.

        The current row is locked while comparing, so two concurrent edits cannot both
        become the same version number.
        """
        with transaction.atomic():
            if self._state.adding:
                super().save(*args, **kwargs)
                self._snapshot()
                return
            current = (
                CognitiveProgram.objects.select_for_update()
                .filter(pk=self.pk)
                .values("pipeline", "variables", "version")
                .first()
            )
            changed = current is None or (current["pipeline"], current["variables"]) != (
                self.pipeline,
                self.variables,
            )
            if current is not None and changed:
                self.version = current["version"] + 1
                if kwargs.get("update_fields") is not None:
                    kwargs["update_fields"] = {*kwargs["update_fields"], "version", "updated_at"}
            super().save(*args, **kwargs)
            if changed:
                self._snapshot()

    def _snapshot(self) -> None:
        ProgramVersion.objects.create(
            program=self, version=self.version, pipeline=self.pipeline, variables=self.variables
        )

    def spec_errors(self) -> list[SpecError]:
        return validate_program(self.pipeline, self.variables)

    def status_change_error(self, status: str) -> str | None:
        """Why `status` cannot be chosen by a person, if it cannot: `optimizing` is the service's
        to set (while an optimization of the program runs), never a person's."""
        if status == self.Status.OPTIMIZING and (self._state.adding or self.status != status):
            return (
                "'optimizing' is set by the service while an optimization runs; "
                "choose draft, active or archived."
            )
        return None

    @property
    def is_runnable(self) -> bool:
        return self.status != self.Status.ARCHIVED

    def version_spec(self, version: int) -> "ProgramVersion":
        return self.versions.get(version=version)


class ProgramVersion(models.Model):
    """An immutable snapshot of a program's pipeline and variables at one version."""

    program = models.ForeignKey(CognitiveProgram, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    pipeline = models.JSONField()
    variables = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        db_table = "program_versions"
        ordering = ["program", "-version"]
        constraints = [models.UniqueConstraint(fields=["program", "version"], name="uniq_program_version")]

    def __str__(self) -> str:
        return f"{self.program_id} v{self.version}"


class Corpus(models.Model):
    """A named set of documents a `Retrieve` step searches (`"corpus": "<name>"` in a spec).

    Documents are embedded on the `embeddings` queue (`caching.embed_corpus`); `embedded` and
    `total` are the progress of the latest indexing, `status` its outcome.
    """

    class Status(models.TextChoices):
        EMPTY = "empty"
        INDEXING = "indexing"
        READY = "ready"
        FAILED = "failed"

    name = models.SlugField(max_length=100, help_text="Unique in its project")
    project = models.ForeignKey(
        "projects.Project",
        on_delete=models.PROTECT,
        related_name="corpora",
        default=default_project_id,
        help_text='The project it belongs to (README, "Projects").',
    )
    description = models.TextField(blank=True)
    embedding_model = models.CharField(max_length=200, blank=True, help_text="Empty: DSPEX_EMBEDDING_MODEL.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.EMPTY)
    total = models.PositiveIntegerField(default=0)
    embedded = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "corpora"
        ordering = ["name"]
        verbose_name_plural = "corpora"
        constraints = [
            models.UniqueConstraint(fields=["name", "project"], name="uniq_corpus_name_per_project")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def model_name(self) -> str:
        if self.embedding_model:
            return self.embedding_model
        default: str | None = settings.DSPEX_EMBEDDING_MODEL  # env_str(..., "sim/embedding")
        if default is None:  # only a settings module that drops the default gets here
            raise ImproperlyConfigured("DSPEX_EMBEDDING_MODEL is not set")
        return default


class Document(models.Model):
    """One passage of a corpus, with its embedding (float32 bytes) once computed.

    `embedded_hash` is the sha256 of the model and text the stored embedding was made from: a
    document whose text (or corpus model) changed no longer matches and is embedded again.
    """

    corpus = models.ForeignKey(Corpus, on_delete=models.CASCADE, related_name="documents")
    external_id = models.CharField(max_length=255)
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    embedding = models.BinaryField(null=True, blank=True, editable=False)
    embedded_hash = models.CharField(max_length=64, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "documents"
        ordering = ["corpus", "external_id"]
        constraints = [models.UniqueConstraint(fields=["corpus", "external_id"], name="uniq_corpus_document")]

    def __str__(self) -> str:
        return f"{self.corpus_id}:{self.external_id}"


class ProgramAlias(models.Model):
    """A named release of a program (docs/releases.md): a program version and the optimization
    result it runs with (none: the plain version). `execute` and friends take `"alias": name`."""

    program = models.ForeignKey(CognitiveProgram, on_delete=models.CASCADE, related_name="aliases")
    name = models.SlugField(max_length=64)
    version = models.PositiveIntegerField()
    optimization_result = models.ForeignKey(
        "optimization.OptimizationResult", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "program_aliases"
        ordering = ["program", "name"]
        verbose_name_plural = "program aliases"
        constraints = [models.UniqueConstraint(fields=["program", "name"], name="uniq_program_alias")]

    def __str__(self) -> str:
        result = f" + {self.optimization_result_id}" if self.optimization_result_id else ""
        return f"{self.name} -> v{self.version}{result}"


class Canary(models.Model):
    """A candidate release served to `percent` % of a program's default traffic beside the
    current release (the control), until promoted or aborted (docs/releases.md)."""

    class Status(models.TextChoices):
        RUNNING = "running"
        PROMOTED = "promoted"
        ABORTED = "aborted"

    class StickyBy(models.TextChoices):
        SESSION = "session"
        USER = "user"
        INPUT = "input"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(CognitiveProgram, on_delete=models.CASCADE, related_name="canaries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    percent = models.FloatField()
    sticky_by = models.CharField(max_length=10, choices=StickyBy.choices, default=StickyBy.SESSION)
    control_version = models.PositiveIntegerField()
    control_result = models.ForeignKey(
        "optimization.OptimizationResult", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    candidate_version = models.PositiveIntegerField()
    candidate_result = models.ForeignKey(
        "optimization.OptimizationResult", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    promote_when = models.JSONField(null=True, blank=True)
    abort_when = models.JSONField(null=True, blank=True)
    decisions = models.JSONField(default=list, blank=True, help_text="Every decision, oldest first.")
    outcome = models.TextField(blank=True, help_text="Why it was promoted or aborted, in words.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "program_canaries"
        ordering = ["-created_at"]
        verbose_name_plural = "canaries"
        constraints = [
            models.UniqueConstraint(
                fields=["program"], condition=models.Q(status="running"), name="uniq_running_canary"
            )
        ]

    def __str__(self) -> str:
        return f"canary {self.percent:g}% of {self.program_id} ({self.status})"
