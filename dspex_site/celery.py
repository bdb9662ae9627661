"""The one Celery app, configured from Django settings (CELERY_ namespace).

Queue names live in `Queue` so producers, routes and the Procfile agree on them.
"""

import os
from enum import StrEnum

from celery import Celery
from kombu import Queue as KombuQueue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dspex_site.settings")


class Queue(StrEnum):
    DEFAULT = "default"
    OPTIMIZATION = "optimization"
    LLM_CALLS = "llm_calls"
    EMBEDDINGS = "embeddings"
    CLEANUP = "cleanup"
    PRIORITY = "priority"


app = Celery("dspex")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_default_queue = Queue.DEFAULT.value
app.conf.task_queues = [KombuQueue(q.value, routing_key=q.value) for q in Queue]
app.conf.task_routes = {
    "executions.run": {"queue": Queue.LLM_CALLS.value},
    "optimization.*": {"queue": Queue.OPTIMIZATION.value},
    "caching.embed*": {"queue": Queue.EMBEDDINGS.value},
    "*.prune*": {"queue": Queue.CLEANUP.value},
    "*.reap*": {"queue": Queue.CLEANUP.value},
}
app.autodiscover_tasks()
