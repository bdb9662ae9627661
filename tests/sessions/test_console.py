"""The console's session pages: read-only, scoped to the user's projects, listing every turn
with a link to its execution; an execution's page links back to its session."""

import uuid

import pytest
from django.test import Client
from django.urls import reverse

from tests.factories import ExecutionFactory, OperatorFactory, ProgramFactory, ProjectFactory, SessionFactory

pytestmark = pytest.mark.django_db


def login(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_session_page_lists_its_turns_with_links_to_their_executions():
    session = SessionFactory(metadata={"customer": "c-42"})
    first = ExecutionFactory(program=session.program, session=session, turn=1, finished=True)
    failed = ExecutionFactory(program=session.program, session=session, turn=2, status="failed")
    client = login(OperatorFactory())
    page = client.get(reverse("admin:executions_session_change", args=[session.id]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "c-42" in html
    for execution in (first, failed):
        assert reverse("admin:executions_cognitiveexecution_change", args=[execution.id]) in html
    assert "dspex-status-failed" in html and "dspex-status-succeeded" in html
    listing = client.get(reverse("admin:executions_session_changelist")).content.decode()
    assert str(session.id) in listing
    # Read-only: no add, change or delete for anyone.
    assert client.get(reverse("admin:executions_session_add")).status_code == 403
    execution_page = client.get(reverse("admin:executions_cognitiveexecution_change", args=[first.id]))
    assert reverse("admin:executions_session_change", args=[session.id]) in execution_page.content.decode()


def test_another_project_s_session_is_answered_as_a_missing_one():
    mine, theirs = ProjectFactory(name="mine"), ProjectFactory(name="theirs")
    client = login(OperatorFactory(username="olga-s", project=mine))
    hidden = SessionFactory(program=ProgramFactory(name="their-chat", project=theirs))
    visible = SessionFactory(program=ProgramFactory(name="my-chat", project=mine))
    listing = client.get(reverse("admin:executions_session_changelist")).content.decode()
    assert str(visible.id) in listing and str(hidden.id) not in listing and "their-chat" not in listing
    real = client.get(reverse("admin:executions_session_change", args=[hidden.id]))
    missing = client.get(reverse("admin:executions_session_change", args=[uuid.uuid4()]))
    assert real.status_code == missing.status_code == 302
    assert real["Location"] == missing["Location"]
