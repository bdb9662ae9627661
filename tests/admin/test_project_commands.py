"""`--project <name>` of the commands that take a program, dataset or corpus name."""

import json
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from optimization.models import Dataset
from programs.models import CognitiveProgram
from projects.models import Membership
from tests.factories import DatasetFactory, ProgramFactory, ProjectFactory

pytestmark = pytest.mark.django_db


def call(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_names_are_looked_up_in_the_given_project_only() -> None:
    ProgramFactory(name="qa", project=ProjectFactory(name="a"))
    ProjectFactory(name="b")
    assert '"name": "qa"' in call("dspex_export_program", "qa", "--project", "a")
    with pytest.raises(CommandError, match="No program named or with id 'qa' in project 'b'"):
        call("dspex_export_program", "qa", "--project", "b")
    with pytest.raises(CommandError, match="No program named or with id 'qa' in project 'b'"):
        call("dspex_run", "qa", "--project", "b", "--input", '{"question": "q"}')
    with pytest.raises(CommandError, match="No project named 'nowhere'"):
        call("dspex_run", "qa", "--project", "nowhere", "--input", '{"question": "q"}')
    assert '"name": "qa"' in call("dspex_export_program", "qa")  # no --project: any project


def test_optimize_takes_the_dataset_from_the_programs_project() -> None:
    ProgramFactory(name="qa", project=ProjectFactory(name="a"))
    DatasetFactory(name="theirs", examples=4, project=ProjectFactory(name="b"))
    with pytest.raises(CommandError):
        call("dspex_optimize", "qa", "--optimizer", "LabeledFewShot", "--dataset", "theirs")


def test_imports_create_in_the_given_project(tmp_path: Path) -> None:
    a = ProjectFactory(name="a")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"input": {"question": "q"}, "output": {"answer": "a"}}) + "\n")
    call("dspex_import_dataset", "ds", str(rows), "--project", "a")
    assert Dataset.objects.get(name="ds").project == a
    # Names are unique per project: the same name in another project is another dataset.
    call("dspex_import_dataset", "ds", str(rows), "--project", "default")
    assert sorted(d.project.name for d in Dataset.objects.filter(name="ds")) == ["a", "default"]

    program = ProgramFactory(name="src")
    exported = tmp_path / "p.json"
    call("dspex_export_program", "src", "-o", str(exported))
    call("dspex_import_program", str(exported), "--name", "copy", "--project", "a")
    assert CognitiveProgram.objects.get(name="copy").project == a
    assert program.project.name == "default"


def test_create_operator_makes_them_an_operator_of_the_project() -> None:
    ProjectFactory(name="a")
    call("dspex_create_operator", "olga", "--project", "a")
    assert Membership.objects.get(user__username="olga").project.name == "a"
