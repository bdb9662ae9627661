"""API keys (README, "API keys"): issued once and stored as digests, scoped, bound to a project,
expiring, revoked everywhere within a second, rotated without downtime, and audited."""

import datetime
import subprocess
import time
from io import StringIO

import pytest
import requests
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from bench.common import start_web
from executions.models import CognitiveExecution
from monitoring.models import AuditEvent
from projects import keys
from projects.models import ApiKey
from tests.factories import (
    KeyFactory,
    MembershipFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
    SuperuserFactory,
    UserFactory,
    ViewerFactory,
    default_project,
)
from tests.support import database_url_of_tests, process_env, start_worker, stop

KEYS = "/api/v1/keys/"
QA = {"signature": "question -> answer"}


def client_with(key: str, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    return client


@pytest.fixture
def operator_key(db):
    """An operator of `default` and a key of theirs with every scope (the API's answer)."""
    user = OperatorFactory(username="olga")
    return user, KeyFactory(user=user)


def issue(client: APIClient, **body) -> dict:
    response = client.post(KEYS, {"name": "ci", **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_a_key_is_shown_once_stored_as_its_digest_and_works_as_bearer_and_token(operator_key):
    _user, first = operator_key
    made = issue(client_with(first.key), project=default_project().pk, scopes=["read", "execute"])
    secret, prefix = made["key"], made["prefix"]
    assert secret.startswith(prefix) and prefix.startswith("dsx_") and len(secret) > 40
    row = ApiKey.objects.get(pk=made["id"])
    assert row.digest == keys.digest(secret) and secret not in str(ApiKey.objects.filter(pk=row.pk).values())
    assert made["scopes"] == ["read", "execute"] and made["user"] == "olga"
    for scheme in ("Bearer", "Token", "bearer"):
        assert client_with(secret, scheme).get("/api/v1/programs/").status_code == 200, scheme
    listed = client_with(secret).get(KEYS)
    assert listed.status_code == 200
    assert secret not in listed.content.decode() and prefix in listed.content.decode()
    assert all("key" not in item and "digest" not in item for item in listed.json()["results"])
    detail = client_with(secret).get(f"{KEYS}{row.pk}/").json()
    assert detail["prefix"] == prefix and "key" not in detail


def test_bad_key_requests_name_the_field_and_write_nothing(operator_key):
    _user, key = operator_key
    client = client_with(key.key)
    before = ApiKey.objects.count()
    cases = [
        ({"scopes": ["read", "sudo"]}, "scopes"),
        ({"scopes": []}, "scopes"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "not a date"}, "expires_at"),
        ({"project": 987654}, "project"),
        ({"service": True}, "project"),  # a service key needs its project
    ]
    for body, path in cases:
        response = client.post(KEYS, {"name": "bad", **body}, format="json")
        assert response.status_code == 400, (body, response.content)
        assert path in {e["path"].split(".")[0].split("[")[0] for e in response.json()["errors"]}, (
            body,
            response.json(),
        )
    assert client.post(KEYS, {}, format="json").json()["errors"][0]["path"] == "name"
    assert ApiKey.objects.count() == before


def test_a_key_holds_no_more_than_its_users_role_or_the_key_that_made_it(db):
    viewer = ViewerFactory(username="vera")
    key = KeyFactory(user=viewer)
    refused = client_with(key.key).post(
        KEYS, {"name": "x", "project": default_project().pk, "scopes": ["execute"]}, format="json"
    )
    assert refused.status_code == 400 and "execute" in refused.json()["detail"]
    # A viewer's key reads; it may not run, whatever scopes it claims.
    assert (
        client_with(key.key)
        .post(f"/api/v1/programs/{ProgramFactory().pk}/execute/", {"input": {"question": "q"}}, format="json")
        .status_code
        == 403
    )

    operator = OperatorFactory(username="otto")
    narrow = KeyFactory(user=operator, project=default_project(), scopes=["read", "admin"])
    other = ProjectFactory(name="other")
    MembershipFactory(user=operator, project=other, role="operator")
    widen = client_with(narrow.key).post(KEYS, {"name": "w", "scopes": ["execute"]}, format="json")
    assert widen.status_code == 400 and widen.json()["errors"][0]["path"] == "scopes"
    escape = client_with(narrow.key).post(
        KEYS, {"name": "e", "project": other.pk, "scopes": ["read"]}, format="json"
    )
    assert escape.status_code == 400  # `other` does not exist for a key of `default`
    inherited = issue(client_with(narrow.key), scopes=["read"])
    assert inherited["project"] == default_project().pk


def test_a_project_key_sees_and_runs_only_its_project_even_for_a_superuser(db, http_provider):
    boss = SuperuserFactory(username="boss")
    team_a, team_b = default_project(), ProjectFactory(name="team-b")
    program_a = ProgramFactory(name="a-qa", pipeline=QA)
    program_b = ProgramFactory(name="b-qa", pipeline=QA, project=team_b)
    key_b = client_with(KeyFactory(user=boss, project=team_b).key)
    names = {p["name"] for p in key_b.get("/api/v1/programs/").json()["results"]}
    assert names == {"b-qa"}
    assert key_b.get(f"/api/v1/programs/{program_a.pk}/").status_code == 404
    assert (
        key_b.post(
            f"/api/v1/programs/{program_a.pk}/execute/",
            {"input": {"question": "q"}, "wait": True},
            format="json",
        ).status_code
        == 404
    )
    ran = key_b.post(
        f"/api/v1/programs/{program_b.pk}/execute/", {"input": {"question": "q"}, "wait": True}, format="json"
    )
    assert ran.status_code == 200, ran.content
    assert CognitiveExecution.objects.get(id=ran.json()["id"]).api_key.project == team_b
    created = key_b.post("/api/v1/programs/", {"name": "made-by-key", "pipeline": QA}, format="json")
    assert created.status_code == 201 and created.json()["project"] == team_b.pk
    assert key_b.post("/api/v1/projects/", {"name": "new-team"}, format="json").status_code == 403
    assert {p["name"] for p in key_b.get("/api/v1/projects/").json()["results"]} == {"team-b"}
    assert team_a.name == "default"


def test_each_scope_allows_what_it_says(db, http_provider):
    boss = SuperuserFactory(username="boss")
    program = ProgramFactory(name="scoped", pipeline=QA)
    execute_path = f"/api/v1/programs/{program.pk}/execute/"
    body = {"input": {"question": "q"}, "wait": True}
    read = client_with(KeyFactory(user=boss, scopes=["read"]).key)
    run = client_with(KeyFactory(user=boss, scopes=["execute"]).key)
    admin = client_with(KeyFactory(user=boss, scopes=["admin"]).key)
    assert read.get("/api/v1/programs/").status_code == 200
    refused = read.post(execute_path, body, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "scope_required"
    assert "`execute`" in refused.json()["detail"]
    assert run.post(execute_path, body, format="json").status_code == 200
    assert run.get("/api/v1/programs/").json()["code"] == "scope_required"
    assert (
        run.patch(f"/api/v1/programs/{program.pk}/", {"description": "x"}, format="json").status_code == 403
    )
    assert (
        admin.patch(f"/api/v1/programs/{program.pk}/", {"description": "x"}, format="json").status_code == 200
    )
    assert admin.post(execute_path, body, format="json").status_code == 403


def test_an_expired_key_fails_with_key_expired(operator_key):
    user, _ = operator_key
    soon = KeyFactory(user=user, expires_at=timezone.now() + datetime.timedelta(seconds=60))
    client = client_with(soon.key)
    assert client.get("/api/v1/programs/").status_code == 200  # cached now
    ApiKey.objects.filter(pk=soon.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    keys.clear()  # as another process would see it within the cache interval
    response = client.get("/api/v1/programs/")
    assert response.status_code == 401 and response.json()["code"] == "key_expired"
    assert soon.prefix in response.json()["detail"]
    assert 'Bearer realm="api"' in response["WWW-Authenticate"]


def test_rotation_two_keys_overlap_then_the_old_one_is_revoked(operator_key):
    _user, old = operator_key
    old_client = client_with(old.key)
    new = issue(old_client, name="rotated")
    new_client = client_with(new["key"])
    assert old_client.get("/api/v1/programs/").status_code == 200
    assert new_client.get("/api/v1/programs/").status_code == 200  # both work meanwhile
    revoked = new_client.post(f"{KEYS}{old.pk}/revoke/")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert old_client.get("/api/v1/programs/").json()["code"] == "key_revoked"
    assert new_client.get("/api/v1/programs/").status_code == 200
    again = new_client.post(f"{KEYS}{old.pk}/revoke/")
    assert again.status_code == 200 and AuditEvent.objects.filter(action="revoke_key").count() == 1


def test_keys_of_others_do_not_exist_for_you_but_project_admins_see_their_projects(db):
    alice, bob = OperatorFactory(username="alice"), OperatorFactory(username="bob")
    admin_user = UserFactory(username="adm", groups=["Operators"])
    MembershipFactory(user=admin_user, role="admin")
    alice_key, bob_key = KeyFactory(user=alice, project=default_project()), KeyFactory(user=bob)
    alice_client = client_with(alice_key.key)
    assert {k["id"] for k in alice_client.get(KEYS).json()["results"]} == {alice_key.pk}
    assert alice_client.get(f"{KEYS}{bob_key.pk}/").status_code == 404
    assert alice_client.post(f"{KEYS}{bob_key.pk}/revoke/").status_code == 404
    bob_key.refresh_from_db()
    assert bob_key.revoked_at is None
    admin_client = client_with(KeyFactory(user=admin_user).key)
    seen = {k["id"] for k in admin_client.get(KEYS).json()["results"]}
    assert alice_key.pk in seen and bob_key.pk not in seen  # bob's key names no project
    assert admin_client.post(f"{KEYS}{alice_key.pk}/revoke/").status_code == 200
    assert alice_client.get("/api/v1/programs/").status_code == 401


def test_service_keys_act_as_the_projects_service_account(db, http_provider):
    admin_user = UserFactory(username="adm", groups=["Operators"])
    MembershipFactory(user=admin_user, role="admin")
    program = ProgramFactory(name="svc-qa", pipeline=QA)
    made = issue(
        client_with(KeyFactory(user=admin_user).key),
        name="deploy",
        project=default_project().pk,
        scopes=["read", "execute"],
        service=True,
    )
    assert made["service"] is True and made["user"] == "service.default"
    service = client_with(made["key"])
    ran = service.post(
        f"/api/v1/programs/{program.pk}/execute/", {"input": {"question": "q"}, "wait": True}, format="json"
    )
    assert ran.status_code == 200, ran.content
    assert not ApiKey.objects.get(pk=made["id"]).user.has_usable_password()
    viewer = client_with(KeyFactory(user=ViewerFactory(username="v")).key)
    refused = viewer.post(
        KEYS,
        {"name": "x", "project": default_project().pk, "service": True, "scopes": ["read"]},
        format="json",
    )
    assert refused.status_code == 403


def test_changes_made_with_a_key_are_audited_with_its_prefix_and_address(operator_key):
    _user, key = operator_key
    client = client_with(key.key)
    response = client.post(
        "/api/v1/programs/", {"name": "audited", "pipeline": QA}, format="json", REMOTE_ADDR="10.1.2.3"
    )
    assert response.status_code == 201
    event = AuditEvent.objects.get(action="create", object_id=response.json()["id"])
    assert (event.actor_name, event.key_prefix, event.ip) == ("olga", key.prefix, "10.1.2.3")
    assert event.project_id == default_project().pk


def test_create_key_command_prints_the_key_alone_on_the_last_line(db):
    user = OperatorFactory(username="cli")
    out = StringIO()
    call_command("dspex_create_key", "cli", "--project", "default", "--scopes", "read,execute", stdout=out)
    secret = out.getvalue().rstrip("\n").splitlines()[-1]
    row = ApiKey.objects.get(digest=keys.digest(secret))
    assert (row.user, row.project, row.scopes) == (user, default_project(), ["read", "execute"])
    assert client_with(secret).get("/api/v1/programs/").status_code == 200
    assert AuditEvent.objects.get(action="issue_key").changes["prefix"] == row.prefix
    service_out = StringIO()
    call_command(
        "dspex_create_key", "--service", "--project", "default", "--scopes", "read", stdout=service_out
    )
    service_key = ApiKey.objects.get(digest=keys.digest(service_out.getvalue().splitlines()[-1]))
    assert service_key.service and service_key.user.username == "service.default"
    for argv, message in [
        (["nobody"], "No active user"),
        (["cli", "--scopes", "read,root"], "unknown scope 'root'"),
        (["cli", "--project", "nope"], "no project 'nope'"),
        (["--service"], "--project"),
        (["cli", "--expires-in-days", "-1"], "positive"),
    ]:
        with pytest.raises(CommandError, match=message):
            call_command("dspex_create_key", *argv, stdout=StringIO())
    stranger = UserFactory(username="lone")
    with pytest.raises(CommandError, match="not a member"):
        call_command("dspex_create_key", "lone", "--project", "default", stdout=StringIO())
    assert not ApiKey.objects.filter(user=stranger).exists()


def test_legacy_plain_tokens_become_digests_and_keep_working(transactional_db):
    """The migration from DRF's plain-text tokens: each becomes a key (same secret, digest only)
    and the plain-text table is dropped."""
    import importlib

    from django.apps import apps as live_apps

    migration = importlib.import_module("projects.migrations.0003_api_keys")
    user = OperatorFactory(username="legacy")
    legacy = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, user_id integer, created timestamptz)"
        )
        cursor.execute("INSERT INTO authtoken_token VALUES (%s, %s, now())", [legacy, user.pk])
    with connection.schema_editor() as editor:
        migration.hash_legacy_tokens(live_apps, editor)
    assert "authtoken_token" not in connection.introspection.table_names()
    row = ApiKey.objects.get(user=user)
    assert row.digest == keys.digest(legacy) and row.prefix == legacy[:10] and row.project is None
    assert client_with(legacy, "Token").get("/api/v1/programs/").status_code == 200


def test_a_database_dump_holds_no_usable_key(transactional_db):
    user = OperatorFactory(username="dumped")
    secrets = [KeyFactory(user=user).key for _ in range(3)]
    url = database_url_of_tests()
    dump = subprocess.run(["pg_dump", "--data-only", url], capture_output=True, text=True, check=True).stdout
    assert "COPY public.api_keys" in dump  # the keys' rows are in it...
    for secret in secrets:
        assert keys.digest(secret) in dump  # ...as digests
        # The 43 random characters after `dsx_<prefix>_` (urlsafe base64 may hold "_" itself).
        assert secret not in dump and secret.split("_", 2)[2] not in dump
    assert "authtoken_token" not in dump


@pytest.mark.e2e
def test_a_revoked_key_fails_within_a_second_on_every_web_process_and_on_the_worker(
    transactional_db, simlm, tmp_path
):
    simlm.reset()
    user = OperatorFactory(username="rev")
    program = ProgramFactory(name="rev-qa", pipeline=QA)
    key = KeyFactory(user=user)
    env = process_env(
        DSPEX_LM="openai/sim-default",
        DSPEX_LM_API_BASE=simlm.base_url,
        DSPEX_LM_API_KEY="sk-test-not-a-real-key",
        DSPEX_API_THROTTLE_RATE="",
    )
    web, port = start_web(env, workers=2, threads=2)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key.key}"}
    try:
        execute = f"{base}/api/v1/programs/{program.pk}/execute/"
        # Warm both web processes' caches with the key (new connection each: both get some).
        for _ in range(20):
            assert requests.get(f"{base}/api/v1/programs/", headers=headers, timeout=10).status_code == 200
        queued = requests.post(execute, json={"input": {"question": "later"}}, headers=headers, timeout=10)
        assert queued.status_code == 202, queued.content
        revoked_at = time.monotonic()
        keys.revoke(key)  # from this process: the web processes have no signal of it
        late: list[float] = []
        while time.monotonic() - revoked_at < 2.0:
            status = requests.get(f"{base}/api/v1/programs/", headers=headers, timeout=10).status_code
            if status == 200:
                late.append(time.monotonic() - revoked_at)
        assert not late or max(late) < 1.0 + 0.25, (
            f"served {len(late)} times after revoke, last at {max(late):.2f}s"
        )
        refused = requests.get(f"{base}/api/v1/programs/", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.json()["code"] == "key_revoked"
        worker = start_worker(env=env)
        try:
            deadline = time.monotonic() + 30
            execution = CognitiveExecution.objects.get(id=queued.json()["id"])
            while not execution.is_finished and time.monotonic() < deadline:
                time.sleep(0.2)
                execution.refresh_from_db()
        finally:
            worker.stop()
        assert execution.status == "failed" and execution.error["type"] == "key_revoked", execution.error
        assert not [entry for entry in execution.trace if entry.get("kind") == "lm"]  # no provider call
    finally:
        stop(web)
