"""Console actors: a superuser, an operator and a viewer (the groups come from the migration)."""

import pytest
from django.test import Client

from tests.factories import OperatorFactory, ViewerFactory


@pytest.fixture
def console_operator(db: None) -> object:
    return OperatorFactory(username="olga")


@pytest.fixture
def console_viewer(db: None) -> object:
    return ViewerFactory(username="victor")


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
