from django.contrib import admin

from optimization.models import OptimizationResult


@admin.register(OptimizationResult)
class OptimizationResultAdmin(admin.ModelAdmin):
    list_display = ["id", "program", "program_version", "optimizer_type", "created_at"]
    list_select_related = ["program"]
