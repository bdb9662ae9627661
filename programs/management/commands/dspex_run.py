"""`manage.py dspex_run <program> --input JSON|@file.json [--var k=v]`: run a program from the shell."""

import getpass
import json
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from dspex_site.commands import add_project_argument, domain_errors_as_command_errors
from dspex_site.display import money
from dspex_site.errors import decode_text
from executions import runner
from executions.models import CognitiveExecution
from monitoring import audit
from programs.management.commands.dspex_export_program import find_program


def parse_inputs(value: str) -> list[dict[str, Any]]:
    """`--input` as inline JSON, `@file.json` (one object) or `@file.jsonl` (one object per line)."""
    source, text = "--input", value
    if value.startswith("@"):
        source = value[1:]
        try:
            with domain_errors_as_command_errors():
                text = decode_text(Path(source).read_bytes(), path=source)
        except OSError as exc:
            raise CommandError(f"Cannot read {source}: {exc.strerror}") from exc
    if source.endswith(".jsonl"):
        lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        items = [_json(line, f"{source} line {n}") for n, line in lines]
    else:
        items = [_json(text, source)]
    for n, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            where = f"{source} line {n}" if len(items) > 1 else source
            raise CommandError(f'{where}: an input must be a JSON object such as {{"question": "..."}}')
    if not items:
        raise CommandError(f"{source} holds no inputs.")
    return items


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


def parse_vars(pairs: list[str]) -> dict[str, Any]:
    """`k=v` pairs; v is read as JSON when it is JSON (0.5, true, "x"), else as a plain string."""
    variables: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--var {pair!r}: expected NAME=VALUE")
        try:
            variables[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            variables[key.strip()] = raw
    return variables


class Command(BaseCommand):
    help = (
        "Run a program (by name or id) and print its output, tokens and cost. --input takes a JSON "
        "object, @file.json, or @file.jsonl to run every line (with a progress bar). Exits non-zero "
        "when the input is invalid or a run fails."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("program", help="program name or id")
        add_project_argument(parser)
        parser.add_argument(
            "--input", required=True, metavar="JSON|@FILE", help="input object, @file.json or @file.jsonl"
        )
        parser.add_argument(
            "--var", action="append", default=[], metavar="NAME=VALUE", help="variable override (repeatable)"
        )
        parser.add_argument("--no-cache", action="store_true", help="bypass the LLM response cache")
        parser.add_argument(
            "--json", action="store_true", help="print each finished execution as one JSON line"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        program = find_program(options["program"], options.get("project"))
        inputs = parse_inputs(options["input"])
        variables = parse_vars(options["var"])
        executions = []
        for item in tqdm(
            inputs, desc=program.name, unit="run", file=sys.stderr, disable=len(inputs) == 1 or None
        ):
            execution = self.run_one(program, item, variables, use_cache=not options["no_cache"])
            executions.append(execution)
            self.report(execution, as_json=options["json"])
        if len(executions) > 1 and not options["json"]:
            self.totals(executions)
        failed = [e for e in executions if e.status != CognitiveExecution.Status.SUCCEEDED]
        if failed:
            raise CommandError(f"{len(failed)} of {len(executions)} run(s) did not succeed.")

    def run_one(self, program: Any, item: dict, variables: dict, *, use_cache: bool) -> CognitiveExecution:
        def audited(execution: CognitiveExecution) -> None:
            changes = {"execution": str(execution.id), "input": item, "os_user": _os_user()}
            audit.record("run", program, channel="command", changes=changes)

        # An invalid input, an archived program, a spent budget: a clear error and a non-zero exit.
        with domain_errors_as_command_errors():
            return runner.run_now(program, item, variables, use_cache=use_cache, on_created=audited).execution

    def report(self, execution: CognitiveExecution, *, as_json: bool) -> None:
        metrics = execution.metrics or {}
        if as_json:
            row = {
                "id": str(execution.id),
                "status": execution.status,
                "output": execution.output,
                "error": execution.error,
                "metrics": metrics,
                "duration_ms": execution.duration_ms,
            }
            self.stdout.write(json.dumps(row, ensure_ascii=False))
            return
        if execution.status == CognitiveExecution.Status.SUCCEEDED:
            self.stdout.write(json.dumps(execution.output, indent=2, ensure_ascii=False))
        else:
            error = execution.error or {}
            self.stderr.write(f"{execution.status}: {error.get('type', '?')}: {error.get('message', '')}")
        prompt, completion = metrics.get("prompt_tokens", 0), metrics.get("completion_tokens", 0)
        self.stdout.write(
            f"tokens: {prompt} prompt + {completion} completion = {prompt + completion}"
            f"  cost: {money(metrics.get('cost_usd'))}"
            f"  LM calls: {metrics.get('lm_calls', 0)} ({metrics.get('cache_hits', 0)} cached)"
            f"  {execution.duration_ms} ms  execution {execution.id}"
        )

    def totals(self, executions: list[CognitiveExecution]) -> None:
        tokens = sum(
            (e.metrics or {}).get("prompt_tokens", 0) + (e.metrics or {}).get("completion_tokens", 0)
            for e in executions
        )
        cost = sum((e.metrics or {}).get("cost_usd") or 0 for e in executions)
        ok = sum(e.status == CognitiveExecution.Status.SUCCEEDED for e in executions)
        self.stdout.write(f"total: {ok}/{len(executions)} succeeded, tokens {tokens}, cost {money(cost)}")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
