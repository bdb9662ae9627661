"""Structured logs carry the ids of the work they belong to, DSPy's logger included."""

import io
import json
import logging

import pytest

from monitoring.logs import ContextFilter, JsonFormatter, log_context

pytestmark = pytest.mark.django_db


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.addFilter(ContextFilter())
        self.setFormatter(JsonFormatter())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_every_line_of_an_execution_carries_its_ids(api, make_program, http_provider, settings):
    from llm import gateway

    settings.DSPEX_LM_API_BASE = "http://127.0.0.1:9/v1"  # nothing listens: the run fails and logs it
    gateway.reset()
    capture = Capture()
    logging.getLogger().addHandler(capture)
    try:
        program = make_program(name="logged")
        body = api.post(
            f"/api/v1/programs/{program.id}/execute/",
            {"input": {"question": "q"}, "wait": True},
            format="json",
        ).json()
    finally:
        logging.getLogger().removeHandler(capture)
    failure = [line for line in capture.lines if line["message"].startswith("execution failed")]
    assert failure, capture.lines
    assert failure[0]["execution_id"] == body["id"]
    assert failure[0]["program_id"] == str(program.id)
    assert failure[0]["request_id"]
    assert "sk-test" not in json.dumps(capture.lines)


def test_dspys_logger_is_configured_with_the_context():
    handlers = logging.getLogger("dspy").handlers
    assert handlers, "dspy sets propagate=False: without its own handler its lines are lost"
    handler = handlers[0]
    stream = io.StringIO()
    old = handler.setStream(stream)
    try:
        with log_context(execution_id="exec-1", program_id="prog-1"):
            logging.getLogger("dspy.adapters").warning("adapter fell back to JSON")
    finally:
        handler.setStream(old)
    line = stream.getvalue()
    assert "adapter fell back to JSON" in line
    assert "exec-1" in line and "prog-1" in line


def test_celery_tasks_bind_their_id(transactional_db):
    from celery.signals import task_postrun, task_prerun

    from monitoring.logs import current_context

    class FakeTask:
        name = "executions.run"

    task_prerun.send(sender=None, task_id="task-123", task=FakeTask())
    assert current_context()["task_id"] == "task-123"
    assert current_context()["task"] == "executions.run"
    task_postrun.send(sender=None, task_id="task-123", task=FakeTask())
    assert "task_id" not in current_context()
