"""The console's canary dashboard and alias list (programs.admin)."""

import pytest
from django.test import Client

from monitoring.models import AuditEvent
from programs import releases
from programs.models import Canary
from tests.factories import OperatorFactory, ProgramFactory, ProjectFactory, SuperuserFactory, ViewerFactory
from tests.releases.test_releases import add, tuned_result

pytestmark = pytest.mark.django_db


def test_canary_dashboard_shows_per_arm_figures_and_the_decision_log():
    program = ProgramFactory()
    canary = releases.start_canary(
        program, 1, tuned_result(program).pk, 50, "input", channel="api", promote_when={"min_executions": 3}
    )
    add(canary, "control", [0.5, 0.6, 0.55])
    add(canary, "candidate", [0.9, 0.95, 0.92], cost=0.002)
    releases.set_alias(program, "stable", 1, None, channel="api")
    assert releases.evaluate(canary.pk) == "promoted"
    client = Client()
    client.force_login(SuperuserFactory(username="root"))
    page = client.get(f"/admin/programs/canary/{canary.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "0.9233" in html and "0.55" in html  # each arm's mean feedback
    assert "Welch" in html and "promoted: feedback 0.92 vs 0.55" in html
    aliases = client.get("/admin/programs/programalias/")
    assert aliases.status_code == 200 and "stable" in aliases.content.decode()


def test_an_operator_promotes_from_the_canary_page_through_the_api_s_code_path():
    program = ProgramFactory()
    result = tuned_result(program)
    canary = releases.start_canary(program, 1, result.pk, 50, "input", channel="api")
    page_url = f"/admin/programs/canary/{canary.pk}/change/"

    viewer = Client()
    viewer.force_login(ViewerFactory())
    assert viewer.get(page_url).status_code == 200
    assert "Promote:" not in viewer.get(page_url).content.decode()  # reading only: no buttons
    assert viewer.post(f"/admin/programs/canary/{canary.pk}/promote/").status_code == 403
    canary.refresh_from_db()
    assert canary.status == Canary.Status.RUNNING

    operator = Client()
    operator.force_login(OperatorFactory(username="ops"))
    page = operator.get(page_url).content.decode()
    assert "Promote:" in page and "Abort:" in page
    assert operator.get(f"/admin/programs/canary/{canary.pk}/promote/").status_code == 405  # POST only
    done = operator.post(f"/admin/programs/canary/{canary.pk}/promote/", follow=True)
    assert done.status_code == 200 and "Canary promoted by ops." in done.content.decode()
    canary.refresh_from_db()
    program.refresh_from_db()
    assert canary.status == Canary.Status.PROMOTED and canary.outcome == "promoted by ops"
    assert canary.decisions[-1]["by"] == "admin"
    assert program.active_result_id == result.pk
    event = AuditEvent.objects.get(action="promote_canary", object_id=str(program.pk))
    assert (event.channel, event.actor_name, event.changes["reason"]) == ("admin", "ops", "promoted by ops")
    assert "Promote:" not in operator.get(page_url).content.decode()  # finished: no buttons

    # Deciding a canary that is no longer running is a message on the page, never a 500.
    again = operator.post(f"/admin/programs/canary/{canary.pk}/abort/", follow=True)
    assert again.status_code == 200 and "no longer running" in again.content.decode()
    canary.refresh_from_db()
    assert canary.status == Canary.Status.PROMOTED


def test_an_operator_aborts_from_the_canary_page_and_the_control_stays():
    program = ProgramFactory()
    canary = releases.start_canary(program, 1, tuned_result(program).pk, 20, "session", channel="api")
    operator = Client()
    operator.force_login(OperatorFactory(username="ops2"))
    response = operator.post(f"/admin/programs/canary/{canary.pk}/abort/")
    assert response.status_code == 302
    canary.refresh_from_db()
    program.refresh_from_db()
    assert (canary.status, canary.outcome, program.active_result_id) == ("aborted", "aborted by ops2", None)
    assert AuditEvent.objects.filter(action="abort_canary", channel="admin", actor_name="ops2").count() == 1
    stranger = Client()
    stranger.force_login(OperatorFactory(project=ProjectFactory()))  # an operator of another project
    assert stranger.post(f"/admin/programs/canary/{canary.pk}/abort/").status_code == 404
