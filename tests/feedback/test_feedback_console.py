"""Feedback on the execution's console page: shown, added through the form, audited, scoped."""

import pytest
from django.urls import reverse

from executions.models import Feedback
from monitoring.models import AuditEvent
from tests.factories import ExecutionFactory, FeedbackFactory, ProgramFactory, ProjectFactory

pytestmark = pytest.mark.django_db


def page(execution: object) -> str:
    return reverse("admin:executions_cognitiveexecution_change", args=[execution.pk])


def form_url(execution: object) -> str:
    return reverse("admin:executions_feedback", args=[execution.pk])


def test_the_page_shows_feedback_and_the_form_adds_audited_feedback(operator_client):
    execution = FeedbackFactory(score=0.9, label="great-answer", comment="spot on").execution
    html = operator_client.get(page(execution)).content.decode()
    assert "great-answer" in html and "spot on" in html and form_url(execution) in html

    response = operator_client.post(
        form_url(execution),
        {"score": "0.4", "label": "too-long", "corrected_output": '{"answer": "short"}', "comment": ""},
    )
    assert response.status_code == 302 and response["Location"] == page(execution)
    entry = Feedback.objects.get(author__username="olga")
    assert (entry.score, entry.label, entry.corrected_output, entry.channel) == (
        0.4,
        "too-long",
        {"answer": "short"},
        "admin",
    )
    execution.refresh_from_db()
    assert (execution.feedback_count, execution.feedback_score) == (2, pytest.approx(0.65))
    event = AuditEvent.objects.get(action="feedback", object_id=str(execution.pk))
    assert event.channel == "admin" and event.actor_name == "olga"
    html = operator_client.get(page(execution)).content.decode()
    assert "too-long" in html and "Feedback saved." in html


def test_bad_console_feedback_is_a_message_and_writes_nothing(operator_client):
    execution = ExecutionFactory(finished=True)
    response = operator_client.post(
        form_url(execution), {"score": "3", "corrected_output": '{"colour": "red"}'}, follow=True
    )
    html = response.content.decode()
    assert "Feedback not saved: score" in html
    assert "corrected_output.colour" in html
    assert not Feedback.objects.exists() and not AuditEvent.objects.filter(action="feedback").exists()


def test_viewers_see_feedback_but_cannot_give_it(viewer_client):
    execution = FeedbackFactory(label="seen-by-viewer").execution
    html = viewer_client.get(page(execution)).content.decode()
    assert "seen-by-viewer" in html and form_url(execution) not in html
    assert viewer_client.post(form_url(execution), {"score": "1"}).status_code == 403
    assert Feedback.objects.count() == 1


def test_another_projects_execution_is_a_404(operator_client):
    theirs = ExecutionFactory(finished=True, program=ProgramFactory(project=ProjectFactory(name="elsewhere")))
    assert operator_client.post(form_url(theirs), {"score": "1"}).status_code == 404
    assert not Feedback.objects.exists()


def test_the_list_shows_and_filters_by_feedback(operator_client):
    scored = FeedbackFactory(score=0.25).execution
    plain = ExecutionFactory(finished=True)
    listing = "/admin/executions/cognitiveexecution/"
    html = operator_client.get(listing).content.decode()
    assert "0.25 (1)" in html
    with_feedback = operator_client.get(listing, {"feedback": "yes"}).content.decode()
    assert str(scored.pk)[:8] in with_feedback and str(plain.pk)[:8] not in with_feedback
    low = operator_client.get(listing, {"feedback": "low"}).content.decode()
    high = operator_client.get(listing, {"feedback": "high"}).content.decode()
    assert str(scored.pk)[:8] in low and str(scored.pk)[:8] not in high
