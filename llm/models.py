"""Operator-editable provider settings. No secrets here: keys come only from the environment."""

from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models


class Budget(models.Model):
    """A daily and/or monthly spend limit (USD) for one provider, program, project or API key.

    Adds to `DSPEX_BUDGETS` from settings; when both name the same target the lower limit wins.
    """

    class Scope(models.TextChoices):
        PROVIDER = "provider", "Provider"
        PROGRAM = "program", "Program"
        PROJECT = "project", "Project"
        KEY = "key", "API key"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    provider = models.CharField(
        max_length=100, blank=True, help_text="Provider name, the prefix of a model string (e.g. openai)."
    )
    program = models.ForeignKey(
        "programs.CognitiveProgram", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    project = models.ForeignKey(
        "projects.Project", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    api_key = models.ForeignKey(
        "projects.ApiKey", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    daily_limit_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    monthly_limit_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Project and key budgets: provider calls per minute (sliding)"
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Project and key budgets: tokens per minute (sliding)"
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "llm_budgets"
        constraints = [
            models.UniqueConstraint(
                fields=["provider"], condition=models.Q(scope="provider"), name="one_budget_per_provider"
            ),
            models.UniqueConstraint(
                fields=["program"], condition=models.Q(scope="program"), name="one_budget_per_program"
            ),
            models.UniqueConstraint(
                fields=["project"], condition=models.Q(scope="project"), name="one_budget_per_project"
            ),
            models.UniqueConstraint(
                fields=["api_key"], condition=models.Q(scope="key"), name="one_budget_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.target_label}"

    @property
    def target_label(self) -> str:
        if self.scope == self.Scope.PROVIDER:
            return self.provider
        if self.scope == self.Scope.PROJECT:
            return str(self.project or "")
        if self.scope == self.Scope.KEY:
            return key_label(self.api_key) if self.api_key else ""
        return str(self.program or "")

    def clean(self) -> None:
        if self.scope == self.Scope.PROVIDER and not self.provider:
            raise ValidationError({"provider": "A provider budget needs a provider name."})
        if self.scope == self.Scope.PROGRAM and self.program_id is None:
            raise ValidationError({"program": "A program budget needs a program."})
        if self.scope == self.Scope.PROJECT and self.project_id is None:
            raise ValidationError({"project": "A project budget needs a project."})
        if self.scope == self.Scope.KEY and self.api_key_id is None:
            raise ValidationError({"api_key": "A key budget needs an API key."})
        if self.scope in (self.Scope.PROVIDER, self.Scope.PROGRAM) and (
            self.requests_per_minute or self.tokens_per_minute
        ):
            raise ValidationError(
                {
                    "requests_per_minute": "Per-minute limits are for projects and keys "
                    "(providers: DSPEX_PROVIDER_LIMITS)."
                }
            )
        for name in ("daily_limit_usd", "monthly_limit_usd"):
            value = getattr(self, name)
            if value is not None and value < Decimal(0):
                raise ValidationError({name: "A limit cannot be negative."})


def key_label(api_key: Any) -> str:
    """A key's name in metrics and lists: its project's name and its own (never its id, prefix or
    secret), e.g. `team-b/ci`; `*/ci` for a key of every project of its user."""
    project = api_key.project.name if api_key.project is not None else "*"
    return f"{project}/{api_key.name}"
