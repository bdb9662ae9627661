"""`GET /api/v1/providers/`: provider health (breaker state, failures, last error, limits, spend)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from llm import providers as provider_info

ProviderSerializer = inline_serializer(
    "Provider",
    many=True,
    fields={
        "name": serializers.CharField(help_text="provider@host: one breaker per endpoint"),
        "provider": serializers.CharField(),
        "state": serializers.ChoiceField(["closed", "half_open", "open", "unknown"]),
        "consecutive_failures": serializers.IntegerField(required=False),
        "times_opened": serializers.IntegerField(required=False),
        "last_error": serializers.CharField(allow_null=True, required=False),
        "last_error_at": serializers.FloatField(allow_null=True, required=False),
        "retry_in_s": serializers.FloatField(required=False),
        "in_flight": serializers.IntegerField(required=False),
        "limits": serializers.DictField(required=False),
        "budgets": serializers.ListField(child=serializers.DictField(), required=False),
    },
)


@extend_schema(responses=ProviderSerializer, tags=["providers"])
@api_view(["GET"])
def providers(request: Request) -> Response:
    """Every provider endpoint's circuit breaker and limits; state `unknown` when Redis is down."""
    return Response(provider_info.overview())
