"""Domain errors on the console and the shell: a spent budget (or an archived program, a file
that is not text) is a message on the Run page and a clear non-zero exit of the commands, and
all three "run now" entry points run as interactive traffic."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from executions.models import CognitiveExecution
from llm import budgets, resilience
from monitoring import telemetry
from monitoring.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def spent(settings):
    """A program whose daily budget of $0 is used up before it ever ran."""

    def spend(program: object) -> object:
        settings.DSPEX_BUDGETS = {"programs": {str(program.id): {"daily": 0}}}
        budgets.invalidate()
        return program

    yield spend
    budgets.invalidate()


@pytest.fixture
def traffic_seen():
    """The traffic class of every execution started while the test runs."""
    seen: list[str] = []

    def handler(event: str, measurements: dict, metadata: dict) -> None:
        if event == "execution.start":
            seen.append(metadata.get("traffic"))

    telemetry.attach(handler)
    yield seen
    telemetry.detach(handler)


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_run_page_shows_a_spent_budget_as_a_message(operator_client, make_program, spent):
    program = spent(make_program("qa"))

    response = operator_client.post(
        reverse("admin:programs_run", args=[program.pk]), {"input__question": "hi"}, follow=True
    )

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    assert any("daily budget" in m and "used up" in m for m in messages), messages
    assert not CognitiveExecution.objects.exists() and not AuditEvent.objects.filter(action="run").exists()


def test_dspex_run_exits_with_a_clear_error_on_a_spent_budget(make_program, spent):
    program = spent(make_program("qa"))

    with pytest.raises(CommandError, match=r"daily budget of program .* \(\$0.00\) is used up"):
        run("dspex_run", program.name, "--input", '{"question": "hi"}')
    assert not CognitiveExecution.objects.exists()


def test_dspex_batch_exits_with_a_clear_error_on_a_spent_budget(make_program, spent, tmp_path):
    program = spent(make_program("qa"))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"question": "hi"}\n')

    with pytest.raises(CommandError, match="budget"):
        run("dspex_batch", program.name, str(inputs), "-o", str(tmp_path / "out.jsonl"), "--in-process")
    assert not CognitiveExecution.objects.exists()


def test_commands_refuse_input_files_that_are_not_text(make_program, tmp_path):
    make_program("qa")
    binary = tmp_path / "in.jsonl"
    binary.write_bytes(b'{"question": "caf\xe9"}\n')

    with pytest.raises(CommandError, match=r"in.jsonl: is not UTF-8 text \(byte 0xe9 at offset 17\)"):
        run("dspex_run", "qa", "--input", f"@{binary}")
    with pytest.raises(CommandError, match=r"inputs\[line 1\]: is not UTF-8 text"):
        run("dspex_batch", "qa", str(binary), "-o", str(tmp_path / "out.jsonl"), "--in-process")
    for command in (["dspex_import_program"], ["dspex_import_dataset", "d"], ["dspex_index_corpus", "c"]):
        with pytest.raises(CommandError, match="is not UTF-8 text"):
            run(*command, str(binary))
    assert not CognitiveExecution.objects.exists()


def test_every_run_now_entry_point_is_interactive_traffic(
    api, operator_client, make_program, traffic_seen, monkeypatch
):
    program = make_program("qa")
    admitted: list[str] = []
    admit = resilience.admit

    def spy(*args: object, **kwargs: object) -> object:
        admitted.append(resilience.current_traffic())
        return admit(*args, **kwargs)

    monkeypatch.setattr(resilience, "admit", spy)

    body = {"input": {"question": "api"}, "wait": True}
    assert api.post(f"/api/v1/programs/{program.id}/execute/", body, format="json").status_code == 200
    page = operator_client.post(
        reverse("admin:programs_run", args=[program.pk]), {"input__question": "admin"}
    )
    assert page.status_code == 200
    run("dspex_run", "qa", "--input", '{"question": "shell"}')

    assert traffic_seen == ["interactive"] * 3
    assert set(admitted) == {"interactive"} and len(admitted) >= 3
    assert CognitiveExecution.objects.filter(status="succeeded").count() == 3
