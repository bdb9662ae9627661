"""Bind Celery task ids to log lines: every line a task writes carries task_id and task name."""

from typing import Any

from celery.signals import beat_init, task_postrun, task_prerun

from monitoring.heartbeat import start_beat_heartbeat
from monitoring.logs import bind, unbind

_tokens: dict[str, Any] = {}


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    if task_id:
        _tokens[task_id] = bind(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect
def _unbind_task(task_id: str | None = None, **kwargs: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        unbind(token)


beat_init.connect(start_beat_heartbeat)
