"""Helpers of the key, budget and rate-limit tests: a client with an API key, an execution."""

from typing import Any

from rest_framework.test import APIClient

from llm import budgets, resilience

QA = {"signature": "question -> answer"}


def client_for(key: Any) -> APIClient:
    """An API client sending `Authorization: Bearer <key>` (a KeyFactory key, or the key itself)."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {getattr(key, 'key', key)}")
    return client


def execute(client: APIClient, program: Any, question: str, wait: bool = True) -> Any:
    return client.post(
        f"/api/v1/programs/{program.pk}/execute/",
        {"input": {"question": question}, "wait": wait},
        format="json",
    )


def fresh_limits(settings: Any) -> None:
    """No limits from settings, Redis not skipped, this process's limits re-read."""
    resilience._redis.skip_until = 0.0
    settings.DSPEX_BUDGETS = {}
    budgets.invalidate()
