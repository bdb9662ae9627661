from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from executions.models import CognitiveExecution


@admin.register(CognitiveExecution)
class ExecutionAdmin(admin.ModelAdmin):
    list_display = ["id", "program", "status", "duration_ms", "created_at"]
    list_filter = ["status"]
    list_select_related = ["program"]
    search_fields = ["id"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
