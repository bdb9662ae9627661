"""Budgets per project and per API key (README, "API keys"): counted from every call's cost in
the same Redis counters as provider and program budgets, refused with 402 `budget_exceeded`,
exported by project name and key name (never an id, a prefix or a secret)."""

import pytest

from llm import budgets
from llm.models import Budget
from projects import keys
from tests.factories import (
    KeyFactory,
    MembershipFactory,
    OperatorFactory,
    ProgramFactory,
    ProjectFactory,
    default_project,
)
from tests.projects.support import QA, client_for, execute, fresh_limits

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _priced(settings, http_provider):
    settings.DSPEX_PRICES = {
        **settings.DSPEX_PRICES,
        "openai/sim-default": {"prompt": 1000, "completion": 1000},
    }
    fresh_limits(settings)
    yield
    budgets.invalidate()


def test_a_spent_project_budget_refuses_that_projects_work_only(client):
    user = OperatorFactory(username="pat")
    other = ProjectFactory(name="team-b")
    MembershipFactory(user=user, project=other, role="operator")
    mine, theirs = (
        ProgramFactory(name="a-qa", pipeline=QA),
        ProgramFactory(name="b-qa", pipeline=QA, project=other),
    )
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), daily_limit_usd="0.001")
    budgets.invalidate()
    api = client_for(KeyFactory(user=user))
    assert execute(api, mine, "spends it").status_code == 200
    refused = execute(api, mine, "after")
    assert refused.status_code == 402 and refused.json()["code"] == "budget_exceeded"
    assert "project 'default'" in refused.json()["detail"]
    assert execute(api, theirs, "another project").status_code == 200
    exposed = client.get("/metrics").content.decode()
    assert 'dspex_budget_exceeded{period="daily",scope="project",target="default"} 1.0' in exposed


def test_a_spent_key_budget_refuses_that_key_not_its_users_other_keys(client):
    user = OperatorFactory(username="kim")
    program = ProgramFactory(name="k-qa", pipeline=QA)
    limited = KeyFactory(user=user, name="ci", project=default_project())
    free = KeyFactory(user=user, name="laptop")
    Budget.objects.create(scope=Budget.Scope.KEY, api_key=limited, monthly_limit_usd="0.001")
    budgets.invalidate()
    assert execute(client_for(limited), program, "spends it").status_code == 200
    refused = execute(client_for(limited), program, "after")
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exceeded")
    assert "key 'default/ci'" in refused.json()["detail"]
    assert execute(client_for(free), program, "another key").status_code == 200
    exposed = client.get("/metrics").content.decode()
    assert 'dspex_budget_exceeded{period="monthly",scope="key",target="default/ci"} 1.0' in exposed
    assert limited.prefix not in exposed and limited.key not in exposed


def test_project_budgets_from_settings_name_the_project(settings):
    user = OperatorFactory(username="sam")
    program = ProgramFactory(name="s-qa", pipeline=QA)
    settings.DSPEX_BUDGETS = {"projects": {"default": {"daily": 0.001}}}
    budgets.invalidate()
    api = client_for(KeyFactory(user=user))
    assert execute(api, program, "spends it").status_code == 200
    assert execute(api, program, "after").status_code == 402


def test_queued_work_of_a_spent_key_fails_on_the_worker_path():
    from executions import runner

    user = OperatorFactory(username="q")
    program = ProgramFactory(name="q-qa", pipeline=QA)
    key = KeyFactory(user=user, project=default_project())
    principal = keys.lookup(key.key)
    assert principal is not None
    waiting = runner.create_execution(program, {"question": "queued before"}, user=principal.user)
    assert waiting.api_key_id == key.pk
    Budget.objects.create(scope=Budget.Scope.KEY, api_key=key, daily_limit_usd="0.001")
    budgets.invalidate()
    assert execute(client_for(key), program, "spends it").status_code == 200
    outcome = runner.run_execution(waiting.id)
    assert outcome.execution.status == "failed" and outcome.execution.error["type"] == "budget_exceeded"


def test_the_console_lists_project_and_key_budgets_with_what_they_used_to_their_projects_only(client):
    user = OperatorFactory(username="con")
    program = ProgramFactory(name="c-qa", pipeline=QA)
    key = KeyFactory(user=user, name="ci", project=default_project())
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), daily_limit_usd="5")
    Budget.objects.create(scope=Budget.Scope.KEY, api_key=key, monthly_limit_usd="5", requests_per_minute=100)
    hidden = Budget.objects.create(
        scope=Budget.Scope.PROJECT, project=ProjectFactory(name="secret-team"), daily_limit_usd=1
    )
    budgets.invalidate()
    assert execute(client_for(key), program, "spend a little").status_code == 200
    client.force_login(user)
    page = client.get("/admin/llm/budget/").content.decode()
    assert "default/ci" in page and "1 calls" in page and "this month" in page
    assert "secret-team" not in page
    assert client.get(f"/admin/llm/budget/{hidden.pk}/change/").status_code in (302, 404)
