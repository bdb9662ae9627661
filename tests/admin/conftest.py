"""Console actors: a superuser, an operator and a viewer (the groups come from the migration)."""

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from executions.models import CognitiveExecution


def _member(django_user_model: type, username: str, group: str) -> object:
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username * 3, is_staff=True
    )
    user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def console_operator(django_user_model: type) -> object:
    return _member(django_user_model, "olga", "Operators")


@pytest.fixture
def console_viewer(django_user_model: type) -> object:
    return _member(django_user_model, "victor", "Viewers")


def _client(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser_client(operator: object) -> Client:
    """`operator` in tests/conftest.py is a superuser."""
    return _client(operator)


@pytest.fixture
def operator_client(console_operator: object) -> Client:
    return _client(console_operator)


@pytest.fixture
def viewer_client(console_viewer: object) -> Client:
    return _client(console_viewer)


@pytest.fixture
def make_execution(db: None):
    """A finished execution row with the given trace and metrics (as the runner stores them)."""

    def make(program: object, trace: list | None = None, **fields: object) -> CognitiveExecution:
        trace = trace or []
        lm = [e for e in trace if e.get("kind") == "lm"]
        metrics = {
            "lm_calls": len(lm),
            "cache_hits": sum(1 for e in lm if e.get("cache_hit")),
            "prompt_tokens": sum(e.get("prompt_tokens", 0) for e in lm),
            "completion_tokens": sum(e.get("completion_tokens", 0) for e in lm),
            "cost_usd": round(sum(e.get("cost_usd") or 0 for e in lm), 10),
            "cost_complete": True,
        }
        values = {
            "program": program,
            "program_version": program.version,
            "input": {"question": "q"},
            "output": {"answer": "a"},
            "status": "succeeded",
            "duration_ms": 12,
            "trace": trace,
            "metrics": metrics,
            **fields,
        }
        return CognitiveExecution.objects.create(**values)

    return make
