"""`manage.py dspex_export_program <program> [-o file]`: a program as one JSON document."""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from dspex_site.commands import add_project_argument, by_name_or_id
from monitoring import audit
from programs.models import CognitiveProgram

FORMAT = "dspex-program/1"


def find_program(ref: str, project: str | None = None) -> CognitiveProgram:
    """A program by name or id (in the project named `project`, if given); a clear
    CommandError when there is none, or when the name is in several projects."""
    return by_name_or_id(CognitiveProgram.objects.select_related("active_result"), ref, project, "program")


def export_program(program: CognitiveProgram) -> dict[str, Any]:
    """Everything needed to recreate the program elsewhere, including its active optimized state."""
    result = program.active_result
    return {
        "format": FORMAT,
        "name": program.name,
        "description": program.description,
        "status": program.status,
        "version": program.version,
        "pipeline": program.pipeline,
        "variables": program.variables,
        "optimization_history": program.optimization_history,
        "active_optimization": None
        if result is None
        else {
            "optimizer_type": result.optimizer_type,
            "program_version": result.program_version,
            "parameters": result.parameters,
            "performance_metrics": result.performance_metrics,
            "training_data_hash": result.training_data_hash,
        },
    }


class Command(BaseCommand):
    help = (
        "Export a program (by name or id) as JSON: pipeline, variables, status, version, optimization "
        "history and the active optimization parameters. `dspex_import_program` reads it back."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("program", help="program name or id")
        parser.add_argument("-o", "--output", help="write to this file instead of standard output")
        add_project_argument(parser)

    def handle(self, *args: Any, program: str, output: str | None, **options: Any) -> None:
        found = find_program(program, options.get("project"))
        text = json.dumps(export_program(found), indent=2, ensure_ascii=False) + "\n"
        if output:
            try:
                Path(output).write_text(text, encoding="utf-8")
            except OSError as exc:
                raise CommandError(f"Cannot write {output}: {exc.strerror}") from exc
        else:
            self.stdout.write(text, ending="")
        audit.record(
            "export", found, channel="command", changes={"file": output or "-", "version": found.version}
        )
        if output:
            self.stderr.write(f"Exported '{found.name}' v{found.version} to {output}.")
