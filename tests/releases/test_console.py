"""The console's canary dashboard and alias list (programs.admin)."""

import pytest
from django.test import Client

from programs import releases
from tests.factories import ProgramFactory, SuperuserFactory
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
