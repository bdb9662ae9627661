"""Fixtures: the bundled demo datasets and programs, imported the way operators import them."""

import json
from pathlib import Path

import pytest

from optimization import datasets
from optimization.models import Dataset
from tests.factories import DatasetFactory

DEMO = Path(__file__).resolve().parents[2] / "programs" / "demo"


def demo_program_spec(name: str) -> dict:
    return next(p for p in json.loads((DEMO / "programs.json").read_text()) if p["name"] == name)


@pytest.fixture(autouse=True)
def _slow_heartbeat(settings) -> None:
    """In-process runs inside a test transaction: the heartbeat thread's own connection cannot see
    the uncommitted run row and would take that for a cancellation. Tests that exercise the
    heartbeat use `transactional_db` and set a short period themselves."""
    settings.DSPEX_OPTIMIZATION_HEARTBEAT_S = 300


@pytest.fixture
def tickets(db: None) -> Dataset:
    dataset = DatasetFactory(name="tickets")
    datasets.import_rows(dataset, datasets.parse_jsonl((DEMO / "tickets.jsonl").read_text()))
    return dataset


@pytest.fixture
def classifier(make_program):
    spec = demo_program_spec("demo-ticket-classifier")
    return make_program(name=spec["name"], pipeline=spec["pipeline"], variables=spec["variables"])


@pytest.fixture
def qa(db: None) -> Dataset:
    dataset = DatasetFactory(name="qa")
    datasets.import_rows(dataset, datasets.parse_jsonl((DEMO / "qa.jsonl").read_text()))
    return dataset


@pytest.fixture
def context_qa(make_program):
    """Answers from the context with a `model` variable; the default model answers in whole sentences."""
    pipeline = {
        "lm": {"model": "$var.model", "temperature": "$var.temperature"},
        "steps": [
            {
                "name": "answer",
                "module": "Predict",
                "signature": "context: list[str], question: str -> answer: str",
                "instructions": "Answer the question from the context.",
                "inputs": {"context": "$input.context", "question": "$input.question"},
            }
        ],
    }
    variables = {
        "model": {"type": "choice", "choices": ["sim/default", "sim/concise"], "default": "sim/default"},
        "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 1},
    }
    return make_program(name="context-qa", pipeline=pipeline, variables=variables)
