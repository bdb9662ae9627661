"""A long-lived process must not grow: DSPy's history lists are kept out of executions."""

import gc
import tracemalloc

import dspy
import pytest
from dspy.clients import base_lm

from executions import runner
from llm import gateway

pytestmark = pytest.mark.django_db


def run_many(program, start, count):
    for i in range(start, start + count):
        execution = runner.create_execution(program, {"question": f"question number {i}?"})
        outcome = runner.run_execution(execution.id)
        assert outcome.execution.status == "succeeded", outcome.execution.error


@pytest.mark.slow
def test_two_thousand_executions_leave_no_growing_history(make_program):
    program = make_program(
        pipeline={
            "steps": [
                {
                    "name": "draft",
                    "module": "Predict",
                    "signature": "question -> answer",
                    "inputs": {"question": "$input.question"},
                },
                {
                    "name": "final",
                    "module": "ChainOfThought",
                    "signature": "question, draft -> answer",
                    "inputs": {"question": "$input.question", "draft": "$draft.answer"},
                },
            ]
        }
    )
    run_many(program, 0, 200)  # warm up: imports, compiled program, connection pools
    gc.collect()
    # Other tests may have called DSPy directly: what matters is that executions add nothing.
    global_history, global_trace = len(base_lm.GLOBAL_HISTORY), len(dspy.settings.trace)
    tracemalloc.start()
    baseline, _ = tracemalloc.get_traced_memory()
    run_many(program, 200, 1800)
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert len(base_lm.GLOBAL_HISTORY) == global_history
    lm = gateway.lm_for({}, cache=True)
    assert len(lm.history) == 0
    compiled = runner.compiled_program(program.id, program.version, None)
    assert all(len(p.history) == 0 for _, p in compiled.named_predictors())
    assert all(len(getattr(m, "history", [])) == 0 for _, m in compiled.named_sub_modules())
    # 1,800 executions with ~4 KB of prompts each would be ~7 MB if anything kept them.
    growth = current - baseline
    assert growth < 2_000_000, f"traced memory grew by {growth} bytes over 1,800 executions"
    assert len(dspy.settings.trace) == global_trace  # the process-wide prediction trace
