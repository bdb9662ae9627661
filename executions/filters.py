import django_filters

from executions.models import CognitiveExecution


class ExecutionFilter(django_filters.FilterSet):
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = CognitiveExecution
        fields = ["program", "status", "batch", "created_after", "created_before"]
