"""Requests and tokens per minute per project and per API key (llm.quotas): shared through Redis,
refused with 429 `rate_limited` before anything is stored, checked again on every provider call
of work already running, and exported by project name and key name."""

import pytest

from executions.models import CognitiveExecution
from llm import budgets, quotas
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
def _fresh(settings, http_provider):
    fresh_limits(settings)
    yield
    budgets.invalidate()


def test_a_projects_requests_per_minute_refuse_new_work_with_429_and_nothing_stored(client):
    user = OperatorFactory(username="pat")
    other = ProjectFactory(name="team-b")
    MembershipFactory(user=user, project=other, role="operator")
    mine, theirs = (
        ProgramFactory(name="a-qa", pipeline=QA),
        ProgramFactory(name="b-qa", pipeline=QA, project=other),
    )
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), requests_per_minute=2)
    budgets.invalidate()
    api = client_for(KeyFactory(user=user))
    assert [execute(api, mine, f"q{i}").status_code for i in range(2)] == [200, 200]
    before = CognitiveExecution.objects.count()
    refused = execute(api, mine, "third")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert "project 'default'" in refused.json()["detail"] and int(refused["Retry-After"]) >= 1
    assert execute(api, mine, "queued", wait=False).status_code == 429
    assert CognitiveExecution.objects.count() == before  # refused before anything was stored
    assert execute(api, theirs, "another project").status_code == 200
    exposed = client.get("/metrics").content.decode()
    assert 'dspex_rate_limit_used{kind="requests",scope="project",target="default"} 2.0' in exposed
    assert 'dspex_rate_limit_per_minute{kind="requests",scope="project",target="default"} 2.0' in exposed


def test_a_keys_tokens_per_minute_count_what_its_calls_used():
    user = OperatorFactory(username="kim")
    program = ProgramFactory(name="k-qa", pipeline=QA)
    limited = KeyFactory(user=user, name="ci", project=default_project())
    Budget.objects.create(scope=Budget.Scope.KEY, api_key=limited, tokens_per_minute=5)
    budgets.invalidate()
    assert execute(client_for(limited), program, "uses more than five tokens").status_code == 200
    (rate,) = quotas.rates()
    (used,) = quotas.usage([rate]) or []
    assert used[0] == 1 and used[1] > 5  # one call, its tokens
    refused = execute(client_for(limited), program, "after")
    assert refused.status_code == 429 and "tokens per minute of key 'default/ci'" in refused.json()["detail"]
    assert execute(client_for(KeyFactory(user=user, name="other")), program, "another key").status_code == 200


def test_calls_of_running_work_are_admitted_against_the_limit_too():
    from executions import runner

    user = OperatorFactory(username="q")
    program = ProgramFactory(name="q-qa", pipeline=QA)
    key = KeyFactory(user=user, project=default_project())
    principal = keys.lookup(key.key)
    assert principal is not None
    waiting = runner.create_execution(program, {"question": "queued before"}, user=principal.user)
    Budget.objects.create(scope=Budget.Scope.KEY, api_key=key, requests_per_minute=1)
    budgets.invalidate()
    assert execute(client_for(key), program, "takes the minute").status_code == 200
    outcome = runner.run_execution(waiting.id)
    assert outcome.execution.status == "failed" and outcome.execution.error["type"] == "rate_limited"
    assert "requests per minute of key" in outcome.execution.error["message"]


def test_the_lower_of_settings_and_console_limits_wins(settings):
    Budget.objects.create(scope=Budget.Scope.PROJECT, project=default_project(), requests_per_minute=50)
    settings.DSPEX_BUDGETS = {"projects": {"default": {"requests_per_minute": 7, "tokens_per_minute": 900}}}
    budgets.invalidate()
    (rate,) = quotas.rates()
    assert (rate.label, rate.requests_per_minute, rate.tokens_per_minute) == ("default", 7, 900)


def test_per_minute_limits_are_refused_on_provider_and_program_budgets():
    from django.core.exceptions import ValidationError

    budget = Budget(scope=Budget.Scope.PROVIDER, provider="openai", requests_per_minute=3)
    with pytest.raises(ValidationError, match="projects and keys"):
        budget.full_clean()
