"""Fixtures of the feedback tests: console clients (as tests/admin's)."""

import pytest
from django.test import Client

from tests.factories import OperatorFactory, ViewerFactory


def _client(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator_client(db: None) -> Client:
    return _client(OperatorFactory(username="olga"))


@pytest.fixture
def viewer_client(db: None) -> Client:
    return _client(ViewerFactory(username="victor"))
