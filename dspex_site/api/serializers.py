"""Request-body helpers: strict serializers and rows a body names by id."""

from typing import Any, TypeVar

from django.db.models import Model, QuerySet
from rest_framework import serializers, status

from dspex_site.api.errors import APIError

Row = TypeVar("Row", bound=Model)


def referenced_row(
    queryset: QuerySet[Row], pk: Any, *, path: str, code: str, detail: str, problem: str
) -> Row:
    """The row a request body names by id at `path`, or a 400 pointing at that path."""
    row = queryset.filter(id=pk).first()
    if row is None:
        raise APIError(status.HTTP_400_BAD_REQUEST, code, detail, [{"path": path, "message": problem}])
    return row


class StrictSerializer(serializers.Serializer):
    """Refuses unknown body fields, so a typo is an error rather than a silent default."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)
