"""Import a JSONL or CSV file into a dataset (created if new); all rows or none, errors per row."""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from dspex_site.commands import add_project_argument, domain_errors_as_command_errors, project_named
from dspex_site.errors import decode_text
from optimization import datasets
from optimization.models import Dataset


class Command(BaseCommand):
    help = (
        "Import examples from a JSONL or CSV file into a dataset. Nothing is imported if any row is invalid."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("dataset", help="Dataset name (created if it does not exist).")
        parser.add_argument("path")
        add_project_argument(parser, creates=True)
        parser.add_argument("--format", choices=["jsonl", "csv"], help="Default: from the file extension.")
        parser.add_argument("--outputs", default="", help="CSV: comma-separated output columns.")
        parser.add_argument("--replace", action="store_true", help="Replace the dataset's examples.")

    def handle(self, *args: Any, dataset: str, path: str, **options: Any) -> None:
        file = Path(path)
        fmt = options["format"] or ("csv" if file.suffix.lower() == ".csv" else "jsonl")
        outputs = [name for name in options["outputs"].split(",") if name]
        with domain_errors_as_command_errors():
            text = decode_text(file.read_bytes(), path=str(file))
        try:
            rows = datasets.parse(text, fmt, outputs)
        except datasets.DatasetError as exc:
            for error in exc.errors[:100]:
                self.stderr.write(f"row {error.row}: {error.path or '(row)'}: {error.message}")
            raise CommandError(str(exc)) from exc
        project = project_named(options.get("project"))
        target, created = Dataset.objects.get_or_create(name=dataset, project=project)
        count = datasets.import_rows(target, rows, replace=options["replace"])
        verb = "Created" if created else "Updated"
        self.stdout.write(
            self.style.SUCCESS(f"{verb} dataset '{dataset}' ({target.id}): {count} example(s) imported.")
        )
