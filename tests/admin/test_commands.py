"""The console's manage.py commands: run, export/import, create an operator; all audited as "command"."""

import json
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from executions.models import CognitiveExecution
from monitoring.models import AuditEvent
from programs.models import CognitiveProgram
from programs.spec import compile_program
from projects import keys
from projects.models import ApiKey
from tests.factories import OptimizationResultFactory
from tests.support import process_env

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["dspex_run", "dspex_export_program", "dspex_import_program", "dspex_create_operator"]
VARIABLES = {
    "temperature": {"type": "float", "default": 0.0, "min": 0, "max": 2},
    "model": {"type": "choice", "choices": ["sim/default", "sim/concise"], "default": "sim/default"},
}
PIPELINE = {
    "lm": {"model": "$var.model", "temperature": "$var.temperature"},
    "signature": "question -> answer",
}


def optimized_state(pipeline: dict, variables: dict) -> dict:
    """A DSPy state of the program with one demo and new instructions, as an optimizer saves it."""
    state = compile_program(pipeline, variables).dump_state()
    state["main"]["demos"] = [{"question": "2+2?", "answer": "4"}]
    state["main"]["signature"]["instructions"] = "Be brief."
    return state


def call(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = subprocess.run(
        [sys.executable, "manage.py", command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and len(result.stdout) > 200


def test_a_bad_input_exits_non_zero_with_a_clear_message():
    result = subprocess.run(
        [sys.executable, "manage.py", "dspex_run", "no-such-program", "--input", "{}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=process_env(),
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "No program named or with id 'no-such-program'" in result.stderr


def test_dspex_run_prints_output_tokens_and_cost_and_is_audited(make_program, settings):
    settings.DSPEX_PRICES = {**settings.DSPEX_PRICES, "sim": {"prompt": 1.0, "completion": 2.0}}
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    out, _ = call(
        "dspex_run", "qa", "--input", '{"question": "What is 12 * 7?"}', "--var", "model=sim/concise"
    )
    execution = CognitiveExecution.objects.get()
    assert execution.status == "succeeded" and execution.variables["model"] == "sim/concise"
    assert json.dumps(execution.output["answer"]) in out
    metrics = execution.metrics
    assert f"= {metrics['prompt_tokens'] + metrics['completion_tokens']}" in out
    assert f"cost: ${metrics['cost_usd']:.6f}" in out
    event = AuditEvent.objects.get(action="run")
    assert event.channel == "command" and event.object_id == str(program.pk)


def test_dspex_run_reads_a_file_and_runs_every_line_of_a_jsonl(make_program, tmp_path):
    make_program("qa")
    one = tmp_path / "one.json"
    one.write_text('{"question": "hi"}')
    call("dspex_run", "qa", "--input", f"@{one}")
    many = tmp_path / "many.jsonl"
    many.write_text('{"question": "a"}\n{"question": "b"}\n\n{"question": "c"}\n')
    out, _ = call("dspex_run", "qa", "--input", f"@{many}")
    assert CognitiveExecution.objects.count() == 4
    assert "total: 3/3 succeeded" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "{not json"], "--input is not valid JSON"),
        (["--input", "[1]"], "must be a JSON object"),
        (["--input", '{"quest": "x"}'], "input.question: missing"),
        (["--input", "@/nonexistent/file.json"], "Cannot read /nonexistent/file.json"),
        (["--input", '{"question": "x"}', "--var", "temperature=9"], "variables.temperature"),
        (["--input", '{"question": "x"}', "--var", "novalue"], "expected NAME=VALUE"),
    ],
)
def test_dspex_run_rejects_bad_input_clearly(make_program, args, message):
    make_program("qa", pipeline=PIPELINE, variables=VARIABLES)
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("*", r"\*")):
        call("dspex_run", "qa", *args)
    assert not CognitiveExecution.objects.exists()


def test_export_then_import_round_trips_exactly(make_program, tmp_path):
    program = make_program("qa", pipeline=PIPELINE, variables=VARIABLES, description="Answers questions.")
    program.pipeline = {**PIPELINE, "adapter": "json"}
    program.save()
    result = OptimizationResultFactory(
        program=program,
        optimizer_type="BootstrapFewShot",
        parameters=optimized_state(program.pipeline, VARIABLES),
        performance_metrics={"baseline_score": 40.0, "optimized_score": 80.0},
        training_data_hash="ab" * 32,
    )
    program.active_result = result
    program.optimization_history = [{"result": str(result.id), "optimized_score": 80.0}]
    program.save()
    exported = tmp_path / "qa.json"
    call("dspex_export_program", "qa", "-o", str(exported))
    document = json.loads(exported.read_text())
    assert document["version"] == 2 and document["variables"] == VARIABLES
    assert document["active_optimization"]["parameters"] == result.parameters

    out, _ = call("dspex_import_program", str(exported), "--name", "qa-copy")
    copy = CognitiveProgram.objects.get(name="qa-copy")
    assert "Imported 'qa-copy' v2" in out
    assert copy.active_result is not None and copy.active_result.parameters == result.parameters
    again, _ = call("dspex_export_program", "qa-copy")
    assert json.loads(again) == {**document, "name": "qa-copy"}
    actions = list(AuditEvent.objects.filter(channel="command").values_list("action", flat=True))
    assert sorted(actions) == ["export", "export", "import"]


def test_an_imported_program_runs_with_its_optimized_parameters(make_program, tmp_path):
    program = make_program("qa")
    program.active_result = OptimizationResultFactory(
        program=program,
        optimizer_type="LabeledFewShot",
        parameters=optimized_state(program.pipeline, {}),
    )
    program.save()
    path = tmp_path / "qa.json"
    call("dspex_export_program", "qa", "-o", str(path))
    call("dspex_import_program", str(path), "--name", "qa2")
    call("dspex_run", "qa2", "--input", '{"question": "hi"}')
    execution = CognitiveExecution.objects.get()
    assert execution.optimization_result_id == CognitiveProgram.objects.get(name="qa2").active_result_id
    assert "2+2?" in json.dumps(execution.trace)  # the imported demo reached the LM


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", "is not valid JSON"),
        ('{"name": "x"}', "is not a DSPex program export"),
        (
            '{"format": "dspex-program/1", "name": "x", "status": "active", "version": 1, "variables": {},'
            ' "pipeline": {"steps": [{"name": "a", "module": "Nope"}]}}',
            "pipeline.steps[0]",
        ),
        (
            '{"format": "dspex-program/1", "name": "x", "status": "weird", "version": 1, "variables": {}}',
            "status",
        ),
    ],
)
def test_import_rejects_bad_files_clearly(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CommandError, match=message.replace("[", r"\[")):
        call("dspex_import_program", str(path))
    assert not CognitiveProgram.objects.exists()


def test_import_refuses_to_overwrite_an_existing_program(make_program, tmp_path):
    make_program("qa")
    path = tmp_path / "qa.json"
    call("dspex_export_program", "qa", "-o", str(path))
    with pytest.raises(CommandError, match="already exists"):
        call("dspex_import_program", str(path))
    assert CognitiveProgram.objects.count() == 1


def test_export_of_an_unknown_program_fails():
    with pytest.raises(CommandError, match="No program named"):
        call("dspex_export_program", "ghost")


def test_create_operator_makes_a_staff_user_in_the_operators_group():
    out, _ = call("dspex_create_operator", "olga", "--token")
    user = get_user_model().objects.get(username="olga")
    assert user.is_staff and not user.is_superuser
    assert list(user.groups.values_list("name", flat=True)) == ["Operators"]
    password = out.split("password : ")[1].split()[0]
    assert user.check_password(password)
    secret = out.split("API key  : ")[1].split()[0]
    assert ApiKey.objects.get(user=user).digest == keys.digest(secret)
    event = AuditEvent.objects.get(action="create_operator")
    assert event.channel == "command" and event.object_repr == "olga"
    with pytest.raises(CommandError, match="already exists"):
        call("dspex_create_operator", "olga")
    with pytest.raises(CommandError, match="Invalid username"):
        call("dspex_create_operator", "bad name!")
