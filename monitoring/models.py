"""The append-only audit trail: who did what to which object, from where."""

from typing import Any

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One recorded change. Rows are written once and never updated or deleted by the app."""

    class Channel(models.TextChoices):
        API = "api"
        ADMIN = "admin"
        COMMAND = "command"
        SYSTEM = "system"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_name = models.CharField(max_length=150, blank=True, help_text="Username at the time of the event.")
    action = models.CharField(max_length=50)
    object_type = models.CharField(max_length=100)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=255, blank=True)
    channel = models.CharField(max_length=10, choices=Channel.choices)
    key_prefix = models.CharField(
        max_length=16, blank=True, help_text="The prefix of the API key the change was made with, if any."
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    project = models.ForeignKey(
        "projects.Project",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The project of the object (empty for site-wide events: caches, providers).",
    )

    class Meta:
        db_table = "audit_events"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.actor_name or 'system'} {self.action} {self.object_type} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise PermissionError("Audit events are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("Audit events are append-only")


class UsageRollup(models.Model):
    """Hourly sums of finished executions, for dashboards that stay fast on millions of rows.

    Rows with `model=""` count executions (per program and status) and their duration histogram;
    rows with a model hold that model's LM calls, tokens and cost. Program id and name are kept
    as plain values so history survives a program's deletion. Rebuilt per hour by
    `monitoring.rollups.rollup_hours` (idempotent), so late or re-run executions are counted once.
    """

    hour = models.DateTimeField()
    program_id = models.UUIDField()
    program_name = models.CharField(max_length=255)
    status = models.CharField(max_length=20)
    model = models.CharField(max_length=200, blank=True)
    executions = models.PositiveIntegerField(default=0)
    duration_ms_sum = models.BigIntegerField(default=0)
    duration_histogram = models.JSONField(default=list)
    lm_calls = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_usd = models.FloatField(default=0.0)
    saved_cost_usd = models.FloatField(default=0.0)

    class Meta:
        db_table = "usage_rollups"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "program_id", "status", "model"], name="uniq_usage_rollup"
            )
        ]
        indexes = [models.Index(fields=["hour", "model"], name="idx_rollup_hour_model")]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.program_name} {self.status} {self.model or '*'}"
