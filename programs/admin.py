"""Operator console for programs (minimal; the full console is built on top of this)."""

from typing import Any

from django import forms
from django.contrib import admin
from django.db import transaction
from django.http import HttpRequest

from monitoring import audit
from programs.api import snapshot
from programs.models import CognitiveProgram, ProgramVersion
from programs.spec import validate_program


class ProgramForm(forms.ModelForm):
    class Meta:
        model = CognitiveProgram
        fields = ["name", "description", "status", "pipeline", "variables"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if "pipeline" in data:
            for error in validate_program(data.get("pipeline"), data.get("variables") or {}):
                field = "variables" if error.path.startswith("variables") else "pipeline"
                self.add_error(field, str(error))
        return data


@admin.register(CognitiveProgram)
class ProgramAdmin(admin.ModelAdmin):
    form = ProgramForm
    list_display = ["name", "status", "version", "updated_at"]
    list_filter = ["status"]
    search_fields = ["name"]

    def save_model(self, request: HttpRequest, obj: CognitiveProgram, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = snapshot(CognitiveProgram.objects.get(pk=obj.pk)) if change else {}
            super().save_model(request, obj, form, change)
            after = snapshot(obj)
            changes = audit.diff(before, after) if change else after
            audit.record(
                "update" if change else "create", obj, channel="admin", request=request, changes=changes
            )

    def delete_model(self, request: HttpRequest, obj: CognitiveProgram) -> None:
        with transaction.atomic():
            audit.record("delete", obj, channel="admin", request=request, changes=snapshot(obj))
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        with transaction.atomic():
            for obj in queryset:
                audit.record("delete", obj, channel="admin", request=request, changes=snapshot(obj))
            super().delete_queryset(request, queryset)


@admin.register(ProgramVersion)
class ProgramVersionAdmin(admin.ModelAdmin):
    list_display = ["program", "version", "created_at"]
    list_select_related = ["program"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
