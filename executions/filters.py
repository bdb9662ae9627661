from datetime import UTC, datetime, timedelta

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django_filters.fields import IsoDateTimeField

from executions.models import CognitiveExecution, Session


class BoundedIsoDateTimeField(IsoDateTimeField):
    """ISO 8601 that PostgreSQL can compare: it refuses UTC offsets of 16 h or more (found by the
    schemathesis suite: `created_before=0630-09-04T07:31:09-21:21` was a 500, now a 400)."""

    def to_python(self, value: object) -> datetime | None:
        parsed = super().to_python(value)
        offset = parsed.utcoffset() if parsed is not None else None
        if offset is not None and abs(offset) >= timedelta(hours=16):
            raise ValidationError("UTC offset out of range (at most ±15:59).", code="invalid")
        try:
            return parsed.astimezone(UTC) if offset is not None else parsed
        except OverflowError:
            raise ValidationError("Date out of range.", code="invalid") from None


class BoundedIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = BoundedIsoDateTimeField


class ExecutionFilter(django_filters.FilterSet):
    created_after = BoundedIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = BoundedIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    # Plain id filters, not choices: an id of another project's program filters to nothing, as
    # an unknown id does (a choice filter would answer 400 for the one and not the other).
    program = django_filters.UUIDFilter(field_name="program_id")
    batch = django_filters.UUIDFilter(field_name="batch_id")
    session = django_filters.UUIDFilter(field_name="session_id")
    project = django_filters.NumberFilter(field_name="program__project_id")
    # Feedback (executions.feedback): the execution's own summary columns, no join.
    has_feedback = django_filters.BooleanFilter(method="filter_has_feedback", label="Has feedback")
    min_score = django_filters.NumberFilter(
        field_name="feedback_score", lookup_expr="gte", label="Mean feedback score at least (0..1)"
    )
    max_score = django_filters.NumberFilter(
        field_name="feedback_score", lookup_expr="lte", label="Mean feedback score at most (0..1)"
    )

    def filter_has_feedback(self, queryset: QuerySet, name: str, value: bool | None) -> QuerySet:
        if value is None:
            return queryset
        return queryset.filter(feedback_count__gt=0) if value else queryset.filter(feedback_count=0)

    class Meta:
        model = CognitiveExecution
        fields = [
            "program",
            "status",
            "batch",
            "session",
            "created_after",
            "created_before",
            "has_feedback",
            "min_score",
            "max_score",
        ]


class SessionFilter(django_filters.FilterSet):
    """`?program=` takes a plain id, as above; `?project=` a project's."""

    program = django_filters.UUIDFilter(field_name="program_id")
    project = django_filters.NumberFilter(field_name="program__project_id")

    class Meta:
        model = Session
        fields = ["program", "project"]
