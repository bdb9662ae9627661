"""Fixtures of the data-tier tests: a PgBouncer of their own, the demo classifier and dataset."""

from collections.abc import Iterator

import pytest

from bench.dbservers import PgBouncer
from optimization import datasets
from optimization.models import Dataset
from tests.factories import DatasetFactory
from tests.optimization.conftest import DEMO, demo_program_spec


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode on a free port, in front of the machine's Postgres."""
    bouncer = PgBouncer()
    yield bouncer
    bouncer.close()


@pytest.fixture
def tickets(db: None) -> Dataset:
    dataset = DatasetFactory(name="tickets")
    datasets.import_rows(dataset, datasets.parse_jsonl((DEMO / "tickets.jsonl").read_text()))
    return dataset


@pytest.fixture
def classifier(make_program):
    spec = demo_program_spec("demo-ticket-classifier")
    return make_program(name=spec["name"], pipeline=spec["pipeline"], variables=spec["variables"])
