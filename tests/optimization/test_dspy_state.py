"""Plain DSPy in, plain DSPy out: `POST /api/v1/programs/{id}/import-state/` takes what plain DSPy
3.4.1's `module.save("x.json")` writes, `GET /api/v1/optimization-results/{id}/dspy-state/` gives
what `module.load("x.json")` reads (optimization.dspy_state, docs/dspy.md)."""

import json
from pathlib import Path

import dspy
import pytest

from monitoring.models import AuditEvent
from optimization.models import OptimizationResult

pytestmark = pytest.mark.django_db

QA = {"signature": "question -> answer"}
TRAIN = [
    dspy.Example(question="What is the capital of France?", answer="Paris").with_inputs("question"),
    dspy.Example(question="What is the capital of Italy?", answer="Rome").with_inputs("question"),
    dspy.Example(question="What is the capital of Spain?", answer="Madrid").with_inputs("question"),
]
QUESTIONS = [
    "What is the capital of Germany?",
    "What is the capital of Peru?",
    "Which river runs through Paris?",
]


class PlainQA(dspy.Module):
    """The plain-DSPy program of the same structure as a DSPex `question -> answer` program (its
    one step is called `main`)."""

    def __init__(self, signature: str = "question -> answer") -> None:
        super().__init__()
        self.main = dspy.Predict(signature)

    def forward(self, question: str) -> dspy.Prediction:
        return self.main(question=question)


def saved_state(module: dspy.Module, path: Path) -> dict:
    module.save(str(path))  # save_program=False, JSON: what a DSPy user has on disk
    return json.loads(path.read_text())


def import_url(program: object) -> str:
    return f"/api/v1/programs/{program.pk}/import-state/"


def test_a_program_optimized_in_plain_dspy_round_trips_with_identical_predictions(
    api, make_program, http_provider, tmp_path
):
    program = make_program(pipeline=QA)
    optimized = dspy.LabeledFewShot(k=3).compile(PlainQA(), trainset=TRAIN)
    state = saved_state(optimized, tmp_path / "optimized.json")
    assert set(state) == {"main", "metadata"} and len(state["main"]["demos"]) == 3

    response = api.post(import_url(program), state, format="json")
    assert response.status_code == 201, response.content
    result = response.json()
    assert result["optimizer_type"] == "imported" and result["program_version"] == program.version
    stored = OptimizationResult.objects.get(pk=result["id"])
    assert stored.parameters["main"]["demos"] == state["main"]["demos"]
    assert {d["answer"] for d in stored.parameters["main"]["demos"]} == {"Paris", "Rome", "Madrid"}
    assert AuditEvent.objects.filter(action="import_state", object_id=str(program.pk)).exists()
    assert api.post(f"/api/v1/optimization-results/{result['id']}/apply/").status_code == 200

    through_dspex = []
    for question in QUESTIONS:
        ran = api.post(
            f"/api/v1/programs/{program.pk}/execute/",
            {"input": {"question": question}, "wait": True},
            format="json",
        )
        assert ran.status_code == 200, ran.content
        assert ran.json()["optimization_result"] == result["id"]
        through_dspex.append(ran.json()["output"]["answer"])

    exported = api.get(f"/api/v1/optimization-results/{result['id']}/dspy-state/")
    assert exported.status_code == 200
    assert "attachment" in exported["Content-Disposition"]
    (tmp_path / "exported.json").write_bytes(exported.content)
    fresh = PlainQA()
    fresh.load(str(tmp_path / "exported.json"))  # plain DSPy reads it (it needs the metadata)
    assert fresh.dump_state()["main"] == optimized.dump_state()["main"]

    lm = dspy.LM(
        "openai/sim-default", api_base=http_provider.base_url, api_key="sk-test-not-a-real-key", cache=False
    )
    with dspy.context(lm=lm):
        reloaded = [fresh(question=q).answer for q in QUESTIONS]
        original = [optimized(question=q).answer for q in QUESTIONS]
        unoptimized = [PlainQA()(question=q).answer for q in QUESTIONS]
    assert through_dspex == reloaded == original
    assert unoptimized != original  # the demos change the answers: the state really travelled


def test_a_mismatching_state_is_a_400_naming_predictor_and_field_and_stores_nothing(
    api, make_program, tmp_path
):
    program = make_program(pipeline=QA)

    renamed = saved_state(PlainQA(), tmp_path / "a.json")
    renamed["answer"] = renamed.pop("main")
    response = api.post(import_url(program), renamed, format="json")
    assert response.status_code == 400 and response.json()["code"] == "state_mismatch"
    assert {e["path"] for e in response.json()["errors"]} == {"answer", "main"}

    wider = saved_state(PlainQA("question, context -> answer"), tmp_path / "b.json")
    response = api.post(import_url(program), wider, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors[0]["path"] == "main.signature.fields" and "question, answer" in errors[0]["message"]

    stray = saved_state(dspy.LabeledFewShot(k=1).compile(PlainQA(), trainset=TRAIN), tmp_path / "c.json")
    stray["main"]["demos"][0]["colour"] = "red"
    response = api.post(import_url(program), stray, format="json")
    assert response.status_code == 400
    assert [e["path"] for e in response.json()["errors"]] == ["main.demos[0].colour"]

    for bad, path in (([1, 2], ""), ({"main": "x", "metadata": {}}, "main"), ({"metadata": 3}, "metadata")):
        response = api.post(import_url(program), bad, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["errors"][0]["path"] == path

    assert not OptimizationResult.objects.exists()
    assert not AuditEvent.objects.filter(action="import_state").exists()


def test_a_chain_of_thought_step_maps_to_its_predict(api, make_program, tmp_path):
    program = make_program(
        pipeline={"steps": [{"name": "think", "module": "ChainOfThought", "signature": "question -> answer"}]}
    )

    class PlainCoT(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.think = dspy.ChainOfThought("question -> answer")

    plain = PlainCoT()
    plain.think.predict.demos = [dspy.Example(question="2 + 2?", reasoning="Add them.", answer="4")]
    state = saved_state(plain, tmp_path / "cot.json")
    assert set(state) == {"think.predict", "metadata"}
    response = api.post(import_url(program), state, format="json")
    assert response.status_code == 201, response.content
    exported = api.get(f"/api/v1/optimization-results/{response.json()['id']}/dspy-state/").json()
    assert exported["think.predict"]["demos"] == [
        {"question": "2 + 2?", "reasoning": "Add them.", "answer": "4"}
    ]
    assert exported["metadata"]["dependency_versions"]["dspy"] == dspy.__version__
