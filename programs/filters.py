import django_filters

from programs.models import CognitiveProgram


class ProgramFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    project = django_filters.NumberFilter(field_name="project_id")

    class Meta:
        model = CognitiveProgram
        fields = ["name", "status", "project"]
