"""Celery tasks of retrieval: embedding corpora (queues, limits and retries in
dspex_site.celery.TASKS: both run on the `embeddings` queue). Thin: load by id, call
`programs.retrieval`.

The task names keep their `caching.` prefix: they are wire names, in queued messages and in the
beat schedule rows of existing databases.
"""

import logging

from celery import shared_task

from programs import releases
from programs.models import Canary, Corpus
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


@shared_task(name="releases.evaluate_canaries")
def evaluate_canaries() -> dict[str, str]:
    """Beat: apply every running canary's promote/abort rules once (programs.releases.evaluate)."""
    running = Canary.objects.filter(status=Canary.Status.RUNNING).values_list("id", flat=True)
    return {str(canary_id): evaluate_one(canary_id) for canary_id in running}


@shared_task(name="releases.evaluate_canary")
def evaluate_canary(canary_id: str) -> str:
    """After feedback on one of the canary's executions."""
    return evaluate_one(canary_id)


def evaluate_one(canary_id: object) -> str:
    try:
        return releases.evaluate(canary_id)
    except releases.CanaryConflict:  # promoted or aborted meanwhile (by hand, or another task)
        return "not running"
