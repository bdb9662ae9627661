"""REST API of corpora: documents, indexing (on the embeddings queue) and search."""

from typing import Any

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from dspex_site.api.errors import APIError
from dspex_site.api.schema import raises
from llm.budgets import BudgetExceeded
from llm.resilience import AdmissionError
from monitoring import audit
from programs import retrieval
from programs.models import Corpus
from programs.tasks import embed_corpus
from projects.api import ProjectOwned, ProjectScoped


class DocumentRowSerializer(serializers.Serializer):
    id = serializers.CharField(max_length=255)
    text = serializers.CharField()
    metadata = serializers.DictField(required=False)


class DocumentsSerializer(serializers.Serializer):
    documents = DocumentRowSerializer(many=True, allow_empty=False)


class CorpusSerializer(ProjectOwned):
    documents = serializers.IntegerField(source="total", read_only=True)

    class Meta:
        model = Corpus
        fields = [
            "id",
            "name",
            "project",
            "description",
            "embedding_model",
            "status",
            "documents",
            "embedded",
            "error",
        ]
        read_only_fields = ["status", "embedded", "error"]


class CorpusViewSet(ProjectScoped, viewsets.ModelViewSet):
    queryset = Corpus.objects.all()
    serializer_class = CorpusSerializer
    filterset_fields = ["name", "status"]
    http_method_names = ["get", "post", "patch", "delete"]

    def perform_create(self, serializer: "serializers.BaseSerializer[Corpus]") -> None:
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
        corpus = self.get_object()
        body = DocumentsSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            count = retrieval.load_documents(corpus, body.validated_data["documents"])
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
        corpus = self.get_object()
        query = request.query_params.get("q", "")
        try:
            k = min(max(int(request.query_params.get("k", 5)), 1), 100)
        except ValueError:
            raise APIError(status.HTTP_400_BAD_REQUEST, "invalid", "k must be an integer") from None
        hits = retrieval.search(corpus.name, query, k)
        return Response({"results": [{"text": text, "score": round(score, 6)} for text, score in hits]})
