"""The factories make the rows they promise (tests build on their defaults)."""

import pytest

from tests.factories import (
    BatchFactory,
    DatasetFactory,
    DocumentFactory,
    ExecutionFactory,
    OperatorFactory,
    OptimizationRunFactory,
    OptimizationScheduleFactory,
    ProgramFactory,
    ProgramVersionFactory,
    TokenFactory,
    UserFactory,
    ViewerFactory,
)

pytestmark = pytest.mark.django_db


def test_people_have_their_role_and_a_usable_password():
    outsider = UserFactory()
    assert outsider.check_password(f"pw-{outsider.username}-123456") and not outsider.groups.exists()
    operator = OperatorFactory(password="chosen")
    assert operator.check_password("chosen") and operator.has_perm("programs.run_cognitiveprogram")
    viewer = ViewerFactory()
    assert viewer.has_perm("programs.view_cognitiveprogram")
    assert not viewer.has_perm("programs.change_cognitiveprogram")
    assert TokenFactory(user=viewer).key


def test_a_finished_execution_sums_its_trace_like_the_runner():
    lm = {"kind": "lm", "prompt_tokens": 10, "completion_tokens": 2, "cost_usd": 0.25, "cache_hit": True}
    execution = ExecutionFactory(finished=True, trace=[{"kind": "module"}, lm, dict(lm, cache_hit=False)])
    assert execution.status == "succeeded" and execution.output == {"answer": "a"}
    assert execution.metrics == {
        "lm_calls": 2,
        "cache_hits": 1,
        "prompt_tokens": 20,
        "completion_tokens": 4,
        "cost_usd": 0.5,
        "cost_complete": True,
    }
    assert ExecutionFactory().status == "pending"


def test_rows_follow_their_program_and_carry_their_children():
    program = ProgramFactory(pipeline={"signature": "q -> a"})
    program.pipeline = {"signature": "question -> answer"}
    program.save()
    assert ExecutionFactory(program=program).program_version == 2
    assert ProgramVersionFactory(program=program).version == 3
    batch = BatchFactory(program=program, items=3)
    assert batch.total == 3
    assert list(batch.executions.values_list("batch_index", flat=True).order_by("batch_index")) == [0, 1, 2]
    assert DatasetFactory(examples=2).examples.count() == 2
    assert OptimizationRunFactory().dataset.examples.count() == 4
    assert OptimizationScheduleFactory().interval_s == 3600
    assert DocumentFactory().corpus.name.startswith("corpus-")
