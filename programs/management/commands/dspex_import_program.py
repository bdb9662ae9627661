"""`manage.py dspex_import_program <file>`: recreate a program exported by `dspex_export_program`."""

import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from dspex_site.commands import add_project_argument, domain_errors_as_command_errors, project_named
from dspex_site.errors import decode_text
from monitoring import audit
from optimization.models import OptimizationResult
from programs.management.commands.dspex_export_program import FORMAT
from programs.models import CognitiveProgram
from programs.spec import compile_program, validate_program

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "pipeline": (dict, str),
    "variables": dict,
    "status": str,
    "version": int,
}


def read_document(source: str) -> dict[str, Any]:
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        with domain_errors_as_command_errors():
            text = decode_text(data, path=source)
    except OSError as exc:
        raise CommandError(f"Cannot read {source}: {exc.strerror}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CommandError(f'{source} is not a DSPex program export (expected "format": "{FORMAT}").')
    problems = [
        f"{key}: missing or not {getattr(kind, '__name__', 'an object or string')}"
        for key, kind in REQUIRED.items()
        if not isinstance(document.get(key), kind) or isinstance(document.get(key), bool)
    ]
    if isinstance(document.get("version"), int) and document["version"] < 1:
        problems.append("version: must be 1 or more")
    if document.get("status") not in CognitiveProgram.Status.values:
        problems.append(f"status: must be one of {', '.join(CognitiveProgram.Status.values)}")
    if problems:
        raise CommandError("Invalid export:\n  " + "\n  ".join(problems))
    return document


def check_optimization(document: dict[str, Any]) -> dict[str, Any] | None:
    """The active optimization, checked to load into the program it comes with."""
    active = document.get("active_optimization")
    if active is None:
        return None
    if not isinstance(active, dict) or not isinstance(active.get("parameters"), dict):
        raise CommandError('active_optimization: must be an object with a "parameters" object')
    try:
        compile_program(document["pipeline"], document["variables"]).load_state(active["parameters"])
    except Exception as exc:
        raise CommandError(f"active_optimization.parameters do not fit the pipeline: {exc}") from exc
    return active


class Command(BaseCommand):
    help = (
        "Import a program exported by `dspex_export_program` (a file, or - for standard input). "
        "The program keeps its version, variables, status and active optimization parameters."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("file", help="the export file, or - to read standard input")
        parser.add_argument("--name", help="import under this name instead of the exported one")
        add_project_argument(parser, creates=True)

    def handle(self, *args: Any, file: str, name: str | None, **options: Any) -> None:
        document = read_document(file)
        if name:
            document["name"] = name
        errors = validate_program(document["pipeline"], document["variables"])
        if errors:
            raise CommandError("The program does not validate:\n  " + "\n  ".join(str(e) for e in errors))
        active = check_optimization(document)
        project = project_named(options.get("project"))
        with transaction.atomic():
            if CognitiveProgram.objects.filter(name=document["name"], project=project).exists():
                raise CommandError(
                    f"A program named '{document['name']}' already exists in project {project.name}; "
                    "import it as another with --name."
                )
            program = self.create(document, active, project)
        self.stdout.write(
            self.style.SUCCESS(f"Imported '{program.name}' v{program.version} as {program.id}")
            + (" with its active optimization." if active else ".")
        )

    def create(
        self, document: dict[str, Any], active: dict[str, Any] | None, project: Any
    ) -> CognitiveProgram:
        program = CognitiveProgram(
            name=document["name"],
            project=project,
            description=document.get("description") or "",
            status=document["status"],
            pipeline=document["pipeline"],
            variables=document["variables"],
            optimization_history=document.get("optimization_history") or [],
            # Kept from the export so results, executions and diffs elsewhere keep their numbers.
            version=document["version"],
        )
        program.save()
        if active is not None:
            program.active_result = OptimizationResult.objects.create(
                program=program,
                program_version=active.get("program_version") or program.version,
                optimizer_type=active.get("optimizer_type") or "imported",
                parameters=active["parameters"],
                performance_metrics=active.get("performance_metrics") or {},
                training_data_hash=active.get("training_data_hash") or "",
            )
            program.save(update_fields=["active_result", "updated_at"])
        audit.record(
            "import",
            program,
            channel="command",
            changes={"version": program.version, "active_optimization": program.active_result_id is not None},
        )
        return program
