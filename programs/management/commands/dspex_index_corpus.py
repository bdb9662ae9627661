"""`manage.py dspex_index_corpus <name> docs.jsonl`: load documents into a corpus and embed them.

Each line is `{"id": ..., "text": ..., "metadata": {...}}`. The corpus is created if needed.
Embedding runs here by default (with progress); `--queue` sends it to the `embeddings` queue.
"""

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from dspex_site.commands import add_project_argument, domain_errors_as_command_errors, project_named
from dspex_site.errors import decode_text
from monitoring import audit
from programs.models import Corpus
from programs.retrieval import index_corpus, load_documents
from programs.tasks import embed_corpus


class Command(BaseCommand):
    help = "Load a JSONL file of documents into a corpus and embed them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name")
        parser.add_argument("path", type=Path)
        parser.add_argument("--model", default="", help="Embedding model (default: DSPEX_EMBEDDING_MODEL).")
        parser.add_argument("--queue", action="store_true", help="Embed on the embeddings queue instead.")
        add_project_argument(parser, creates=True)

    def handle(self, *args: Any, name: str, path: Path, model: str, queue: bool, **options: Any) -> None:
        rows = self.read(path)
        project = project_named(options.get("project"))
        corpus, created = Corpus.objects.get_or_create(
            name=name, project=project, defaults={"embedding_model": model}
        )
        count = load_documents(corpus, rows)
        audit.record("create" if created else "update", corpus, channel="cli", changes={"documents": count})
        self.stdout.write(f"{count} documents loaded into corpus {name!r}.")
        if queue:
            embed_corpus.delay(corpus.id)
            self.stdout.write("Embedding queued on the embeddings queue.")
            return
        embedded = index_corpus(corpus.id, on_progress=lambda d, t: self.stdout.write(f"embedded {d}/{t}"))
        self.stdout.write(self.style.SUCCESS(f"{embedded} documents embedded; corpus {name!r} is ready."))

    @staticmethod
    def read(path: Path) -> list[dict]:
        if not path.exists():
            raise CommandError(f"{path} does not exist")
        rows = []
        with domain_errors_as_command_errors():
            text = decode_text(path.read_bytes(), path=str(path))
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("text"), str):
                raise CommandError(f'{path}:{number}: expected {{"id": ..., "text": "..."}}')
            rows.append(row)
        return rows
