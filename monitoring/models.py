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
    ip = models.GenericIPAddressField(null=True, blank=True)
    changes = models.JSONField(default=dict, blank=True)

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
