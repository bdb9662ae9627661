"""Audit trail (read-only for everyone), the Operators/Viewers groups, and API tokens in the console."""

import re

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from monitoring import audit
from monitoring.models import AuditEvent
from programs.models import CognitiveProgram
from projects.models import ApiKey

pytestmark = pytest.mark.django_db

AUDIT = "/admin/monitoring/auditevent/"
PROGRAMS = "/admin/programs/cognitiveprogram/"
TOKENS = "/admin/projects/apikey/"


def test_the_audit_list_shows_who_what_where_and_the_change(superuser_client, operator, make_program):
    program = make_program("qa")
    request = RequestFactory().post("/api/v1/programs/", REMOTE_ADDR="127.0.0.1")
    request.user = operator
    audit.record(
        "update",
        program,
        channel="api",
        request=request,
        changes={"status": {"from": "draft", "to": "active"}},
    )
    page = superuser_client.get(AUDIT).content.decode()
    for text in ("op", "update", "CognitiveProgram", "qa", "api", "127.0.0.1", "status"):
        assert text in page
    event = AuditEvent.objects.get()
    detail = superuser_client.get(
        reverse("admin:monitoring_auditevent_change", args=[event.pk])
    ).content.decode()
    assert "&quot;from&quot;: &quot;draft&quot;" in detail


def test_the_audit_list_stays_at_a_fixed_number_of_queries(superuser_client, operator, make_program):
    program = make_program("qa")
    audit.record("update", program, channel="api", user=operator)
    with CaptureQueriesContext(connection) as few:
        superuser_client.get(AUDIT)
    for n in range(60):
        audit.record("update", program, channel="admin", user=operator, changes={"n": n})
    with CaptureQueriesContext(connection) as many:
        superuser_client.get(AUDIT)
    assert len(many) == len(few)


def test_nobody_can_add_change_or_delete_audit_events(superuser_client, make_program):
    event = audit.record("create", make_program("qa"), channel="command")
    assert superuser_client.get(AUDIT + "add/").status_code == 403
    assert (
        superuser_client.post(
            reverse("admin:monitoring_auditevent_change", args=[event.pk]), {"action": "x"}
        ).status_code
        == 403
    )
    assert (
        superuser_client.post(
            reverse("admin:monitoring_auditevent_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    response = superuser_client.post(
        AUDIT, {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"}
    )
    assert response.status_code in (200, 302)
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_migration_creates_both_groups():
    operators = set(Group.objects.get(name="Operators").permissions.values_list("codename", flat=True))
    viewers = set(Group.objects.get(name="Viewers").permissions.values_list("codename", flat=True))
    assert {
        "run_cognitiveprogram",
        "change_cognitiveprogram",
        "add_cognitiveprogram",
        "view_auditevent",
    } <= operators
    assert {"view_cognitiveprogram", "view_cognitiveexecution", "view_auditevent"} <= viewers
    assert not any(c.startswith(("add_", "change_", "delete_", "run_")) for c in viewers)
    assert not {c for c in operators | viewers if c.endswith(("_user", "_group", "_token", "_tokenproxy"))}


def test_viewers_see_programs_but_cannot_change_them(viewer_client, make_program):
    program = make_program("qa")
    assert viewer_client.get(PROGRAMS).status_code == 200
    change = reverse("admin:programs_cognitiveprogram_change", args=[program.pk])
    assert viewer_client.get(change).status_code == 200
    assert viewer_client.get(PROGRAMS + "add/").status_code == 403
    data = {"name": "renamed", "status": "active", "pipeline": '{"signature": "a -> b"}', "variables": "{}"}
    assert viewer_client.post(change, data).status_code == 403
    assert viewer_client.post(reverse("admin:programs_restore", args=[program.pk, 1])).status_code == 403
    assert CognitiveProgram.objects.get().name == "qa"
    assert "/run/" not in viewer_client.get(PROGRAMS).content.decode()
    assert viewer_client.get("/admin/executions/cognitiveexecution/").status_code == 200
    assert viewer_client.get(AUDIT).status_code == 200


def test_operators_edit_programs_but_not_users_or_tokens(operator_client):
    data = {
        "name": "qa",
        "status": "active",
        "pipeline": '{"signature": "question -> answer"}',
        "variables": "{}",
    }
    assert operator_client.post(PROGRAMS + "add/", data).status_code == 302
    assert CognitiveProgram.objects.filter(name="qa").exists()
    assert operator_client.get("/admin/auth/user/").status_code == 403
    assert operator_client.get(TOKENS).status_code == 403
    assert operator_client.get(TOKENS + "add/").status_code == 403


def test_superusers_issue_and_revoke_keys_and_both_are_audited(superuser_client, console_operator):
    from projects import keys

    form = {"name": "ci", "user": console_operator.pk, "scopes": ["read", "execute"], "project": ""}
    response = superuser_client.post(TOKENS + "add/", form, follow=True)
    api_key = ApiKey.objects.get(user=console_operator)
    page = response.content.decode()
    secret = re.search(r"copy it now\): (\S+?)<", page).group(1)
    assert keys.digest(secret) == api_key.digest and api_key.scopes == ["read", "execute"]
    listing = superuser_client.get(TOKENS).content.decode()
    assert secret not in listing and api_key.prefix in listing
    issued = AuditEvent.objects.get(action="issue_key")
    assert issued.channel == "admin" and issued.changes["prefix"] == api_key.prefix
    assert secret not in str(issued.changes) and api_key.digest not in str(issued.changes)

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/v1/programs/").status_code == 200
    revoke = {"action": "revoke_keys", "_selected_action": [api_key.pk]}
    assert superuser_client.post(TOKENS, revoke).status_code == 302
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert AuditEvent.objects.filter(action="revoke_key", object_id=str(api_key.pk)).exists()
    refused = api.get("/api/v1/programs/")
    assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"
    # Keys are never edited or deleted in the console.
    assert superuser_client.get(reverse("admin:projects_apikey_delete", args=[api_key.pk])).status_code == 403
