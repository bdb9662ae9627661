"""Optimization results: DSPy state produced by an optimizer for one program version."""

import uuid

from django.db import models


class OptimizationResult(models.Model):
    """Optimized parameters for a program: `parameters` is the compiled program's DSPy state JSON."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(
        "programs.CognitiveProgram", on_delete=models.CASCADE, related_name="optimization_results"
    )
    program_version = models.PositiveIntegerField()
    optimizer_type = models.CharField(max_length=50)
    parameters = models.JSONField()
    performance_metrics = models.JSONField(default=dict)
    training_data_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "optimization_results"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["program", "-created_at"], name="idx_optresults_program_created")]

    def __str__(self) -> str:
        return f"{self.optimizer_type} for {self.program_id} v{self.program_version}"
