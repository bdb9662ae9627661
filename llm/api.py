"""`GET /api/v1/providers/`: every configured provider with its health (breaker state, failures,
last error), limits, key source (never the key) and spend; `GET /api/v1/providers/routing/`: the
deployments of each model alias and the fallback lists."""

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
        "limits": serializers.DictField(
            help_text="the effective resilience policy (breaker, timeout, rate limits, bulkhead)"
        ),
        "budgets": serializers.ListField(child=serializers.DictField()),
        "health": serializers.ChoiceField(
            ["ok", "degraded", "recovering", "down", "unknown"],
            help_text="from the breaker: degraded = failing while closed, recovering = half-open",
        ),
        "configured": serializers.BooleanField(
            help_text="in the provider registry now (false: known only from breaker state in Redis)"
        ),
        "kind": serializers.CharField(allow_null=True, help_text="openai, anthropic, gemini, xai or sim"),
        "endpoint": serializers.CharField(allow_null=True, help_text="api_base (userinfo masked)"),
        "key_source": serializers.CharField(
            help_text="where the key is read from: env:NAME, file:/path, setting:NAME or none; never the key"
        ),
        "has_key": serializers.BooleanField(help_text="whether a key is readable from its source now"),
        "key_error": serializers.CharField(allow_null=True, help_text="why the key source cannot be read"),
        "timeout_s": serializers.FloatField(help_text="call timeout in seconds"),
        "deployments": serializers.ListField(
            child=inline_serializer(
                "ProviderDeployment",
                fields={
                    "alias": serializers.CharField(),
                    "strategy": serializers.CharField(),
                    "model": serializers.CharField(),
                    "weight": serializers.FloatField(allow_null=True),
                },
            ),
            help_text="the model aliases this provider serves a deployment of",
        ),
    },
)

RoutingSerializer = inline_serializer(
    "ProviderRouting",
    fields={
        "default_model": serializers.CharField(),
        "deployments": serializers.DictField(
            child=inline_serializer(
                "ModelAlias",
                fields={
                    "strategy": serializers.CharField(),
                    "deployments": inline_serializer(
                        "ModelDeployment",
                        many=True,
                        fields={
                            "model": serializers.CharField(),
                            "provider": serializers.CharField(),
                            "weight": serializers.FloatField(allow_null=True),
                        },
                    ),
                },
            ),
            help_text="DSPEX_MODEL_DEPLOYMENTS: per model alias, its strategy and weighted deployments",
        ),
        "fallbacks": serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            help_text="DSPEX_MODEL_FALLBACKS: per model (and `default`), the models tried next, in order",
        ),
        "problems": serializers.ListField(
            child=serializers.CharField(), help_text="why the provider registry cannot be read, if it cannot"
        ),
    },
)


@extend_schema(responses=ProviderSerializer, tags=["providers"])
@api_view(["GET"])
def providers(request: Request) -> Response:
    """Every configured provider and every endpoint called so far: breaker, health, limits, key
    source, spend; state `unknown` when Redis is down."""
    return Response(provider_info.overview())


@extend_schema(responses=RoutingSerializer, tags=["providers"])
@api_view(["GET"])
def routing(request: Request) -> Response:
    """The deployments of each model alias and the fallback lists, as configured."""
    return Response(provider_info.routing_overview())
