"""REST API: cache stats and purge, corpora (documents, indexing, search)."""

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, OpenApiTypes, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response

from caching import operations
from caching.registry import CACHES
from dspex_site.api.errors import APIError
from dspex_site.api.schema import raises
from llm.budgets import BudgetExceeded
from llm.resilience import AdmissionError
from monitoring import audit
from programs.models import Corpus


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


class DocumentRowSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=255)
    text = serializers.CharField()
    metadata = serializers.DictField(required=False)


class DocumentsSerializer(serializers.Serializer):
    documents = DocumentRowSerializer(many=True, allow_empty=False)


class CorpusSerializer(serializers.ModelSerializer):
    documents = serializers.IntegerField(source="total", read_only=True)

    class Meta:
        model = Corpus
        fields = ["id", "name", "description", "embedding_model", "status", "documents", "embedded", "error"]
        read_only_fields = ["status", "embedded", "error"]


class CorpusViewSet(viewsets.ModelViewSet):
    queryset = Corpus.objects.all()
    serializer_class = CorpusSerializer
    filterset_fields = ["name", "status"]
    http_method_names = ["get", "post", "patch", "delete"]

    def perform_create(self, serializer: CorpusSerializer) -> None:
        with transaction.atomic():
            corpus = serializer.save()
            audit.record("create", corpus, channel="api", request=self.request)

    def perform_destroy(self, instance: Corpus) -> None:
        with transaction.atomic():
            audit.record("delete", instance, channel="api", request=self.request)
            instance.delete()

    @extend_schema(
        request=DocumentsSerializer,
        responses={
            202: inline_serializer(
                "DocumentsQueued",
                {"loaded": serializers.IntegerField(), "status": serializers.CharField(help_text="`queued`")},
            )
        },
    )
    @action(detail=True, methods=["post"])
    def documents(self, request: Request, pk: Any = None) -> Response:
        """Add or replace documents (by `id`), then embed them on the embeddings queue."""
        from caching.tasks import embed_corpus
        from programs.retrieval import load_documents

        corpus = self.get_object()
        body = DocumentsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            count = load_documents(corpus, body.validated_data["documents"])
            audit.record("update", corpus, channel="api", request=request, changes={"documents": count})
            transaction.on_commit(lambda: embed_corpus.delay(corpus.id))
        return Response({"loaded": count, "status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=None,
        responses={
            202: inline_serializer("IndexQueued", {"status": serializers.CharField(help_text="`queued`")})
        },
    )
    @action(detail=True, methods=["post"])
    def index(self, request: Request, pk: Any = None) -> Response:
        """Embed new and changed documents on the embeddings queue; progress on the corpus."""
        from caching.tasks import embed_corpus

        corpus = self.get_object()
        transaction.on_commit(lambda: embed_corpus.delay(corpus.id))
        return Response({"status": "queued"}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="The query text"),
            OpenApiParameter("k", int, description="How many passages (1-100, default 5)"),
        ],
        responses={
            200: inline_serializer(
                "SearchResults",
                {
                    "results": inline_serializer(
                        "SearchHit",
                        {"text": serializers.CharField(), "score": serializers.FloatField()},
                        many=True,
                    )
                },
            )
        },
    )
    @raises(BudgetExceeded, AdmissionError)  # the query is embedded through the gateway
    @action(detail=True, methods=["get"])
    def search(self, request: Request, pk: Any = None) -> Response:
        """`?q=...&k=5`: the top-k passages by cosine similarity, with scores."""
        from programs.retrieval import search

        corpus = self.get_object()
        query = request.query_params.get("q", "")
        try:
            k = min(max(int(request.query_params.get("k", 5)), 1), 100)
        except ValueError:
            raise APIError(status.HTTP_400_BAD_REQUEST, "invalid", "k must be an integer") from None
        hits = search(corpus.name, query, k)
        return Response({"results": [{"text": text, "score": round(score, 6)} for text, score in hits]})


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

    program = CognitiveProgram.objects.filter(id=program_id).first()
    if program is None:
        raise APIError(status.HTTP_404_NOT_FOUND, "not_found", "no such program")
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
