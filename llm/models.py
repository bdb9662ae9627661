"""Operator-editable provider settings. No secrets here: keys come only from the environment."""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models


class Budget(models.Model):
    """A daily and/or monthly spend limit (USD) for one provider or one program.

    Adds to `DSPEX_BUDGETS` from settings; when both name the same target the lower limit wins.
    """

    class Scope(models.TextChoices):
        PROVIDER = "provider", "Provider"
        PROGRAM = "program", "Program"

    scope = models.CharField(max_length=16, choices=Scope.choices)
    provider = models.CharField(
        max_length=100, blank=True, help_text="Provider name, the prefix of a model string (e.g. openai)."
    )
    program = models.ForeignKey(
        "programs.CognitiveProgram", null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    daily_limit_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
    monthly_limit_usd = models.DecimalField(max_digits=12, decimal_places=4, null=True, blank=True)
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
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.target_label}"

    @property
    def target_label(self) -> str:
        return self.provider if self.scope == self.Scope.PROVIDER else str(self.program or "")

    def clean(self) -> None:
        if self.scope == self.Scope.PROVIDER and not self.provider:
            raise ValidationError({"provider": "A provider budget needs a provider name."})
        if self.scope == self.Scope.PROGRAM and self.program_id is None:
            raise ValidationError({"program": "A program budget needs a program."})
        for name in ("daily_limit_usd", "monthly_limit_usd"):
            value = getattr(self, name)
            if value is not None and value < Decimal(0):
                raise ValidationError({name: "A limit cannot be negative."})
