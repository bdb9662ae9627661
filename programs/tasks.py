"""Celery tasks of retrieval: embedding corpora (queues, limits and retries in
dspex_site.celery.TASKS: both run on the `embeddings` queue). Thin: load by id, call
`programs.retrieval`.

The task names keep their `caching.` prefix: they are wire names, in queued messages and in the
beat schedule rows of existing databases.
"""

import logging

from celery import shared_task

from programs.models import Corpus
from programs.retrieval import corpora_needing_embeddings, index_corpus

logger = logging.getLogger(__name__)


@shared_task(name="caching.embed_corpus", bind=True, acks_late=True)
def embed_corpus(self, corpus_id: int) -> int:
    """Embed a corpus' new and changed documents, reporting progress as task state."""
    if not Corpus.objects.filter(id=corpus_id).exists():
        logger.info("corpus %s is gone; nothing to embed", corpus_id)
        return 0

    def progress(done: int, total: int) -> None:
        if self.request.id:
            self.update_state(state="PROGRESS", meta={"done": done, "total": total})

    try:
        return index_corpus(corpus_id, on_progress=progress)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=30) from exc


@shared_task(name="caching.warm_embeddings")
def warm_embeddings() -> int:
    """Beat: queue embedding of every corpus with new or changed documents."""
    corpus_ids = corpora_needing_embeddings()
    for corpus_id in corpus_ids:
        embed_corpus.delay(corpus_id)
    return len(corpus_ids)
