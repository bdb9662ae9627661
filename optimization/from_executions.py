"""Datasets built from production executions (README, "Datasets from executions").

The rows are the program's executions that match (succeeded by default, a time range, a minimum
feedback score), oldest first (`created_at`, then id), so the same executions always give the
same rows in the same positions and therefore the same content hash and the same train/dev split.
Each row's input is the execution's input restricted to the program's *current* input fields, its
output the execution's output (with the latest current corrected output laid over it when asked)
restricted to the current output fields. An execution whose input does not validate against the
current signature, or whose output lacks a current output field, is skipped and counted by reason:
programs evolve, and old executions of another signature are expected, not an error. No
execution left is a 400 (`NoExamples`): an empty dataset is never written.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import IntegrityError, models, transaction
from django.db.models import OuterRef, Subquery

from dspex_site.errors import DomainError
from executions.models import CognitiveExecution, Feedback
from optimization import datasets
from optimization.models import Dataset
from programs.models import CognitiveProgram
from programs.spec import ProgramSpecError, program_input_fields, program_output_fields, validate_inputs

# Skip reasons (the response's `skipped` keys).
NO_OUTPUT = "no_output"
INPUT_MISMATCH = "input_mismatch"
OUTPUT_MISMATCH = "output_mismatch"
# How many skipped executions the answer names (with the reason and what did not fit).
SKIPPED_SHOWN = 20


@dataclass
class Criteria:
    program: CognitiveProgram
    min_score: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    use_corrected_output: bool = False
    only_succeeded: bool = True
    limit: int = datasets.MAX_ROWS
    # Only the executions of this release (version, optimization result or None: the plain version).
    release: tuple[int, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "program": str(self.program.pk),
            "release": None
            if self.release is None
            else {
                "version": self.release[0],
                "optimization_result": None if self.release[1] is None else str(self.release[1]),
            },
            "min_score": self.min_score,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "use_corrected_output": self.use_corrected_output,
            "only_succeeded": self.only_succeeded,
            "limit": self.limit,
        }


@dataclass
class Build:
    """The rows and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    corrected: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[dict[str, str]] = field(default_factory=list)

    def skip(self, execution_id: Any, reason: str, detail: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.skipped_examples) < SKIPPED_SHOWN:
            self.skipped_examples.append({"execution": str(execution_id), "reason": reason, "detail": detail})

    @property
    def content_hash(self) -> str:
        return datasets.training_data_hash(self.rows)

    def report(self) -> dict[str, Any]:
        return {
            "included": len(self.rows),
            "corrected": self.corrected,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": sum(self.skipped.values()),
            "skipped_examples": self.skipped_examples,
            "content_hash": self.content_hash,
        }


def matching(criteria: Criteria) -> models.QuerySet:
    """The executions the criteria select, oldest first, at most `limit` (the newest ones)."""
    queryset = CognitiveExecution.objects.filter(program=criteria.program)
    if criteria.only_succeeded:
        queryset = queryset.filter(status=CognitiveExecution.Status.SUCCEEDED)
    if criteria.release is not None:
        version, result = criteria.release
        queryset = queryset.filter(program_version=version, optimization_result_id=result)
    if criteria.min_score is not None:
        queryset = queryset.filter(feedback_score__gte=criteria.min_score)
    if criteria.since is not None:
        queryset = queryset.filter(created_at__gte=criteria.since)
    if criteria.until is not None:
        queryset = queryset.filter(created_at__lt=criteria.until)
    newest = queryset.order_by("-created_at", "-id").values_list("id", flat=True)[: criteria.limit]
    # One statement: the newest `limit` as a subquery, written oldest first.
    selected = CognitiveExecution.objects.filter(id__in=newest).order_by("created_at", "id")
    if criteria.use_corrected_output:
        latest = (
            Feedback.objects.filter(execution=OuterRef("pk"), current=True, corrected_output__isnull=False)
            .order_by("-created_at", "-id")
            .values("corrected_output")[:1]
        )
        selected = selected.annotate(corrected=Subquery(latest, output_field=models.JSONField()))
    fields = ["id", "input", "output", *(["corrected"] if criteria.use_corrected_output else [])]
    return selected.values(*fields)


def build(criteria: Criteria) -> Build:
    pipeline = criteria.program.pipeline
    inputs, outputs = set(program_input_fields(pipeline)), program_output_fields(pipeline)
    result = Build()
    for execution in matching(criteria).iterator(chunk_size=2000):
        output = execution["output"]
        corrected = execution.get("corrected")
        used_correction = isinstance(corrected, dict)
        if isinstance(corrected, dict):
            output = {**(output if isinstance(output, dict) else {}), **corrected}
        if not isinstance(output, dict):
            result.skip(execution["id"], NO_OUTPUT, "the execution has no output")
            continue
        given = execution["input"] if isinstance(execution["input"], dict) else {}
        example_input = {k: v for k, v in given.items() if k in inputs}
        try:
            validate_inputs(pipeline, example_input)
        except ProgramSpecError as exc:
            first = exc.errors[0] if exc.errors else None
            result.skip(
                execution["id"], INPUT_MISMATCH, f"{first.path}: {first.message}" if first else str(exc)
            )
            continue
        missing = [name for name in outputs if name not in output]
        if missing:
            result.skip(
                execution["id"],
                OUTPUT_MISMATCH,
                f"output lacks {', '.join(missing)} (the program's outputs: {', '.join(outputs)})",
            )
            continue
        result.corrected += used_correction
        result.rows.append({"input": example_input, "output": {name: output[name] for name in outputs}})
    return result


class NoExamples(DomainError):
    """No execution matched the criteria and fit the program's signature: nothing was written."""

    code = "no_examples"

    def __init__(self, program: CognitiveProgram, built: Build) -> None:
        self.built = built
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(built.skipped.items()))
        self.reasons = reasons or "no execution matched the criteria"
        super().__init__(
            f"No execution of program {program.name} can be an example ({self.reasons}); nothing was written."
        )

    def problems(self) -> list[dict[str, str]]:
        return [{"path": "program", "message": f"no execution can be an example ({self.reasons})"}]


class NameTaken(DomainError):
    code = "invalid"

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"name: a dataset named {name!r} already exists in the program's project.")

    def problems(self) -> list[dict[str, str]]:
        return [
            {"path": "name", "message": "a dataset with this name already exists in the program's project"}
        ]


def create_dataset(
    criteria: Criteria,
    *,
    name: str,
    description: str = "",
    audit_record: Any = None,
    built: Build | None = None,
) -> tuple[Dataset, Build]:
    """Build the rows (unless the caller `built` them already) and write the dataset with them,
    in one transaction (nothing on failure). `audit_record(dataset, build)` is called inside it."""
    project_id = criteria.program.project_id
    assert project_id is not None  # every program is in a project
    if Dataset.objects.filter(project_id=project_id, name=name).exists():
        raise NameTaken(name)
    built = build(criteria) if built is None else built
    if not built.rows:
        raise NoExamples(criteria.program, built)
    with transaction.atomic():
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(name=name, project_id=project_id, description=description)
        except IntegrityError:  # created meanwhile by another request
            raise NameTaken(name) from None
        datasets.import_rows(dataset, built.rows)
        if audit_record is not None:
            audit_record(dataset, built)
    return dataset, built
