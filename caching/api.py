"""REST API: cache stats and purge, and each program's LLM-cache policy."""

from django.db import transaction
from drf_spectacular.utils import OpenApiTypes, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view
from rest_framework.request import Request
from rest_framework.response import Response

from caching import operations
from caching.registry import CACHES
from dspex_site.api.errors import APIError
from dspex_site.roles import EDIT, READ
from monitoring import audit
from projects import access


@extend_schema(responses={200: OpenApiTypes.OBJECT})
@api_view(["GET"])
def cache_stats(request: Request) -> Response:
    """Hits, misses, errors, entries, memory and estimated savings of every cache."""
    return Response({"caches": operations.all_stats()})


@extend_schema(
    request=None,
    responses=inline_serializer(
        "CachePurged", {"cache": serializers.CharField(), "removed": serializers.IntegerField()}
    ),
)
@api_view(["POST"])
def cache_purge(request: Request, name: str) -> Response:
    """Delete every entry of one cache (operators: `caching.purge_namedcache`); audited."""
    if name not in CACHES:
        raise APIError(status.HTTP_404_NOT_FOUND, "not_found", f"unknown cache {name!r}")
    if not request.user.has_perm("caching.purge_namedcache"):
        raise APIError(status.HTTP_403_FORBIDDEN, "permission_denied", "purging a cache is for operators")
    removed = operations.purge(name, channel="api", request=request)
    return Response({"cache": name, "removed": removed})


_CachePolicy = inline_serializer(
    "ProgramCachePolicy",
    {"program": serializers.UUIDField(read_only=True), "llm_cache": serializers.BooleanField()},
)


@extend_schema(request=_CachePolicy, responses=_CachePolicy)
@api_view(["GET", "PUT"])
def program_cache_policy(request: Request, program_id: str) -> Response:
    """`{"llm_cache": false}` makes every execution of the program bypass the LLM cache."""
    from caching.models import ProgramCachePolicy
    from programs.models import CognitiveProgram

    program = access.visible(CognitiveProgram.objects.all(), request.user).filter(id=program_id).first()
    if program is None:  # another project's program, exactly as a missing one
        raise APIError(status.HTTP_404_NOT_FOUND, "not_found", "no such program")
    if not access.allows(request.user, program.project_id, READ if request.method == "GET" else EDIT):
        raise APIError(
            status.HTTP_403_FORBIDDEN, "permission_denied", "Your role in this project does not allow this."
        )
    if request.method == "PUT":
        value = request.data.get("llm_cache") if isinstance(request.data, dict) else None
        if not isinstance(value, bool):
            errors = [{"path": "llm_cache", "message": "must be true or false"}]
            raise APIError(status.HTTP_400_BAD_REQUEST, "invalid", "llm_cache must be a boolean", errors)
        with transaction.atomic():
            ProgramCachePolicy.objects.update_or_create(program=program, defaults={"llm_cache": value})
            audit.record("update", program, channel="api", request=request, changes={"llm_cache": value})
    allowed = ProgramCachePolicy.allows_llm_cache(program.id)
    return Response({"program": str(program.id), "llm_cache": allowed})
