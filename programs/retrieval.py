"""Retrieval over stored corpora: load documents, embed them (with progress), search by cosine.

`retrieve(corpus, query, k)` is the registry's retriever for `Retrieve` steps (installed by
`programs.apps`). Each process keeps a corpus' normalised embedding matrix in memory and reloads
it when the corpus changes (its `updated_at`, bumped by every indexing pass).
"""

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, cast

import numpy as np
from django.db import transaction
from django.db.models import Count

from caching.embeddings import embed
from programs.models import Corpus, Document
from programs.spec.errors import PipelineRuntimeError

INDEX_BATCH = 64


def content_hash(model: str, text: str) -> str:
    """Identity of an embedding: the model and the exact text it was computed from."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


def load_documents(corpus: Corpus, rows: Iterable[dict[str, Any]]) -> int:
    """Insert or update documents from rows `{"id", "text", "metadata"?}`; returns how many."""
    count = 0
    with transaction.atomic():
        for row in rows:
            Document.objects.update_or_create(
                corpus=corpus,
                external_id=str(row["id"]),
                defaults={"text": str(row["text"]), "metadata": row.get("metadata") or {}},
            )
            count += 1
        Corpus.objects.filter(id=corpus.id).update(total=corpus.documents.count())
    return count


def stale_documents(corpus: Corpus) -> list[Document]:
    """Documents with no embedding, or one made from other text or another model."""
    model = corpus.model_name
    return [
        doc
        for doc in corpus.documents.only("id", "text", "embedded_hash")
        if doc.embedded_hash != content_hash(model, doc.text)
    ]


def index_corpus(corpus_id: int, on_progress: Callable[[int, int], None] | None = None) -> int:
    """Embed the corpus' new and changed documents; progress is saved after every batch."""
    corpus = Corpus.objects.get(id=corpus_id)
    todo = stale_documents(corpus)
    total = corpus.documents.count()
    done = total - len(todo)
    Corpus.objects.filter(id=corpus.id).update(status=Corpus.Status.INDEXING, total=total, embedded=done)
    try:
        for start in range(0, len(todo), INDEX_BATCH):
            batch = todo[start : start + INDEX_BATCH]
            vectors = embed([doc.text for doc in batch], corpus.model_name)
            for doc, vector in zip(batch, vectors, strict=True):
                doc.embedding = np.asarray(vector, dtype=np.float32).tobytes()
                doc.embedded_hash = content_hash(corpus.model_name, doc.text)
            Document.objects.bulk_update(batch, ["embedding", "embedded_hash"])
            done += len(batch)
            Corpus.objects.filter(id=corpus.id).update(embedded=done)
            if on_progress is not None:
                on_progress(done, total)
    except Exception as exc:
        corpus.status, corpus.error = Corpus.Status.FAILED, f"{type(exc).__name__}: {exc}"[:2000]
        corpus.save(update_fields=["status", "error", "updated_at"])
        raise
    corpus.status, corpus.error, corpus.embedded, corpus.total = Corpus.Status.READY, "", done, total
    corpus.save(update_fields=["status", "error", "embedded", "total", "updated_at"])
    return len(todo)


class _Matrix:
    """A corpus' normalised embeddings and passages, as of one `updated_at`."""

    def __init__(self, stamp: Any, model: str, vectors: np.ndarray, texts: list[str]):
        self.stamp, self.model, self.vectors, self.texts = stamp, model, vectors, texts


_matrices: dict[Any, _Matrix] = {}  # by corpus id: names are unique per project only
_lock = threading.Lock()

# The program whose run is searching: its Retrieve steps see the corpora of its project only.
_running_program: ContextVar[Any] = ContextVar("retrieval_program", default=None)


@contextmanager
def for_program(program_id: Any) -> Iterator[None]:
    """`with for_program(id): ...` around a program's run (executions, optimizations): a
    `Retrieve` step naming a corpus of another project finds none ("does not exist"). Costs
    nothing unless a step searches (one join then, in the query that finds the corpus)."""
    token = _running_program.set(program_id)
    try:
        yield
    finally:
        _running_program.reset(token)


def _matrix(name: str) -> _Matrix:
    corpora = Corpus.objects.filter(name=name)
    program_id = _running_program.get()
    if program_id is not None:
        corpora = corpora.filter(project__programs__id=program_id)
    row = corpora.values("id", "updated_at", "embedding_model").first()
    if row is None:
        raise PipelineRuntimeError("retrieve", f"corpus {name!r} does not exist")
    cached = _matrices.get(row["id"])
    if cached is not None and cached.stamp == row["updated_at"]:
        return cached
    model = Corpus(embedding_model=row["embedding_model"]).model_name
    # embedding__isnull=False: no row has a None embedding, which the stubs cannot see.
    docs = cast(
        list[tuple[str, bytes | memoryview]],
        list(
            Document.objects.filter(corpus_id=row["id"], embedding__isnull=False)
            .order_by("id")
            .values_list("text", "embedding")
        ),
    )
    vectors = np.array([np.frombuffer(bytes(blob), dtype=np.float32) for _t, blob in docs], dtype=np.float32)
    if len(docs):
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    matrix = _Matrix(row["updated_at"], model, vectors, [text for text, _b in docs])
    with _lock:
        _matrices[row["id"]] = matrix
    return matrix


def search(name: str, query: str, k: int) -> list[tuple[str, float]]:
    """The k passages most similar to the query, with their cosine similarity, best first."""
    matrix = _matrix(name)
    if not matrix.texts or k < 1:
        return []
    q = np.asarray(embed([query], matrix.model)[0], dtype=np.float32)
    q /= max(float(np.linalg.norm(q)), 1e-12)
    scores = matrix.vectors @ q
    top = np.argsort(-scores, kind="stable")[:k]
    return [(matrix.texts[i], float(scores[i])) for i in top]


def retrieve(corpus: str, query: str, k: int) -> list[str]:
    """The registry's retriever: top-k passages by cosine similarity."""
    return [text for text, _score in search(corpus, query, k)]


def corpora_needing_embeddings() -> list[int]:
    """Corpora with documents that have no (current) embedding: what the warmer indexes."""
    ids = Corpus.objects.annotate(n=Count("documents")).filter(n__gt=0).values_list("id", flat=True)
    return [corpus_id for corpus_id in ids if stale_documents(Corpus.objects.get(id=corpus_id))]
