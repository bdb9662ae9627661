"""Execution paths beyond the basic one: adapters, tools, optimized state, engine choice, secrets."""

import json
import subprocess
import sys

import dspy
import pytest

from executions.models import CognitiveExecution
from llm.sim import SimEngine
from optimization.models import OptimizationResult
from tests.factories import OptimizationResultFactory
from tests.support import ROOT, process_env

pytestmark = pytest.mark.django_db

CLASSIFIER = {
    "steps": [
        {
            "name": "classify",
            "module": "Predict",
            "signature": "ticket: str -> category: Literal['billing', 'bug', 'feature_request', 'account']",
            "inputs": {"ticket": "$input.ticket"},
        }
    ]
}
TICKET = "I was charged twice on my invoice this month, please refund one payment"


def execute(api, program, body):
    return api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json")


@pytest.mark.parametrize("adapter", ["chat", "json"])
@pytest.mark.parametrize("model", ["sim/default", "openai/gpt-4o-mini"])
def test_both_adapters_work_in_process_and_over_http(api, make_program, http_provider, adapter, model):
    pipeline = {"lm": {"model": model}, "adapter": adapter, **CLASSIFIER}
    body = execute(api, make_program(pipeline=pipeline), {"input": {"ticket": TICKET}, "wait": True}).json()
    assert body["status"] == "succeeded", body
    assert body["output"]["category"] in {"billing", "bug", "feature_request", "account"}
    call = next(e for e in body["trace"] if e["kind"] == "lm")
    system = call["messages"][0]["content"]
    assert ("JSON" in system or "json" in system) if adapter == "json" else "[[ ## category ## ]]" in system


def test_react_uses_the_registered_calculator(api, make_program):
    pipeline = {
        "steps": [
            {
                "name": "agent",
                "module": "ReAct",
                "signature": "question -> answer",
                "tools": ["calculator"],
                "max_iters": 4,
                "inputs": {"question": "$input.question"},
            }
        ]
    }
    body = execute(
        api, make_program(pipeline=pipeline), {"input": {"question": "What is 12 * 7?"}, "wait": True}
    )
    body = body.json()
    assert body["status"] == "succeeded", body
    assert "84" in body["output"]["answer"]
    assert body["metrics"]["lm_calls"] >= 2  # at least one tool step and the extraction


def plain_classifier_state() -> dict:
    """A state made by plain DSPy: a module with the same structure, demos set by hand."""

    class Plain(dspy.Module):
        def __init__(self):
            super().__init__()
            self.classify = dspy.Predict(
                "ticket: str -> category: Literal['billing', 'bug', 'feature_request', 'account']"
            )

    plain = Plain()
    plain.classify.demos = [
        dspy.Example(ticket="the invoice charge and refund are wrong", category="billing").with_inputs(
            "ticket"
        ),
        dspy.Example(ticket="app crashes with an error on upload", category="bug").with_inputs("ticket"),
    ]
    plain.classify.signature = plain.classify.signature.with_instructions("Route tickets to the right team.")
    return plain.dump_state()


def test_a_plain_dspy_state_runs_as_the_programs_parameters(api, make_program):
    program = make_program(pipeline=CLASSIFIER)
    state = plain_classifier_state()
    result = OptimizationResultFactory(program=program, parameters=state)
    program.active_result = result
    program.save()

    body = execute(api, program, {"input": {"ticket": TICKET}, "wait": True}).json()
    assert body["status"] == "succeeded", body
    assert body["optimization_result"] == str(result.id)
    prompt = json.dumps(next(e for e in body["trace"] if e["kind"] == "lm")["messages"])
    assert "Route tickets to the right team." in prompt
    assert "the invoice charge and refund are wrong" in prompt  # the demo reached the LM


def test_stored_parameters_load_into_plain_dspy_and_agree(api, make_program):
    program = make_program(pipeline=CLASSIFIER)
    result = OptimizationResultFactory(program=program, parameters=plain_classifier_state())
    program.active_result = result
    program.save()
    served = execute(api, program, {"input": {"ticket": TICKET}, "wait": True, "cache": False}).json()

    class Plain(dspy.Module):
        def __init__(self):
            super().__init__()
            self.classify = dspy.Predict(
                "ticket: str -> category: Literal['billing', 'bug', 'feature_request', 'account']"
            )

        def forward(self, ticket):
            return self.classify(ticket=ticket)

    plain = Plain()
    plain.load_state(OptimizationResult.objects.get(id=result.id).parameters)
    lm = dspy.LM("sim/default", engine=SimEngine(), num_retries=0, cache=False, max_tokens=1024)
    with dspy.context(lm=lm):
        direct = plain(ticket=TICKET)
    assert direct.category == served["output"]["category"]
    assert plain.classify.demos and len(plain.classify.demos) == 2


def test_the_provider_key_is_never_stored(api, make_program, http_provider):
    body = execute(api, make_program(), {"input": {"question": "secret?"}, "wait": True}).json()
    assert body["status"] == "succeeded"
    row = CognitiveExecution.objects.filter(id=body["id"]).values().get()
    assert "sk-test-not-a-real-key" not in json.dumps(row, default=str)
    assert "sk-test-not-a-real-key" not in json.dumps(body)


def test_http_calls_stay_on_dspys_native_engine_without_litellm(db, simlm):
    """docs/dspy.md: a setting lm15 cannot serve moves calls to litellm (~4 ms CPU each)."""
    code = f"""
import sys, django
django.setup()
from django.conf import settings
settings.DSPEX_LM_API_BASE = "{simlm.base_url}"
from llm import gateway
from dspy.clients.engines.lm15_engine import LM15Engine
import dspy
lm = gateway.lm_for({{"model": "openai/sim-default"}}, cache=False)
assert isinstance(lm.engine.inner, LM15Engine), type(lm.engine.inner)
with dspy.context(lm=lm):
    dspy.Predict("question -> answer")(question="hello")
print("litellm imported:", "litellm" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=process_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "litellm imported: False" in result.stdout
