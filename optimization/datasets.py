"""Datasets: import (JSONL, CSV) with per-row errors, checks against a program, split and hash.

An import is all or nothing: every row is parsed and checked first, and the examples are
written in one transaction only when no row has an error.
"""

import csv
import hashlib
import io
import json
import random
from dataclasses import dataclass
from typing import Any

import dspy
from django.db import transaction
from django.db.models import Max

from dspex_site.errors import DomainError
from optimization.models import Dataset, Example
from programs.spec import ProgramSpecError, program_input_fields, program_output_fields, validate_inputs

MAX_ROWS = 100_000
DEFAULT_DEV_FRACTION = 0.3


@dataclass(frozen=True)
class RowError:
    """A problem with one imported row (1-based line or record number) or one example in use."""

    row: int
    path: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "path": self.path, "message": self.message}


class DatasetError(DomainError):
    """Rows or examples that cannot be used; nothing was written."""

    code = "invalid_dataset"

    def __init__(self, errors: list[RowError], detail: str = "") -> None:
        self.errors = errors
        first = f"row {errors[0].row}: {errors[0].path}: {errors[0].message}" if errors else ""
        super().__init__(detail or f"{len(errors)} invalid row(s); nothing was imported. First: {first}")

    def problems(self) -> list[dict[str, str]]:
        # At most 200: a 100,000-row file full of mistakes must not make a megabyte of errors.
        return [
            {"path": f"rows[{e.row}].{e.path}".rstrip("."), "message": e.message} for e in self.errors[:200]
        ]


def _check_row(number: int, row: Any) -> list[RowError]:
    if not isinstance(row, dict):
        return [RowError(number, "", 'must be an object {"input": {...}, "output": {...}}')]
    errors = [
        RowError(number, key, "unknown key (expected input and output)")
        for key in row
        if key not in ("input", "output")
    ]
    for key in ("input", "output"):
        value = row.get(key)
        if not isinstance(value, dict) or not value:
            errors.append(RowError(number, key, "must be a non-empty object of field values"))
            continue
        errors += [
            RowError(number, f"{key}.{name}", "field names must be identifiers")
            for name in value
            if not (isinstance(name, str) and name.isidentifier())
        ]
    return errors


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """Rows of a JSONL text (blank lines skipped); DatasetError lists every bad line."""
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(RowError(number, "", f"not valid JSON: {exc.msg} at column {exc.colno}"))
            continue
        problems = _check_row(number, row)
        errors += problems
        if not problems:
            rows.append(row)
    return _finish(rows, errors)


def _cell(value: str) -> Any:
    """CSV cells are text; a cell that is a JSON list or object (a context) is parsed."""
    stripped = value.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return value
    return value


def parse_csv(text: str, outputs: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of a CSV with field names as headers.

    Output columns are named `output.<field>` (and inputs optionally `input.<field>`), or listed
    in `outputs`; every other column is an input.
    """
    reader = csv.DictReader(io.StringIO(text))
    headers = reader.fieldnames or []
    outputs = list(outputs or [])
    if not any(h.startswith("output.") for h in headers) and not outputs:
        raise DatasetError(
            [RowError(1, "", "say which columns are outputs: prefix them 'output.' or pass outputs=...")]
        )
    unknown = [name for name in outputs if name not in headers]
    if unknown:
        raise DatasetError([RowError(1, name, "listed as an output but not a column") for name in unknown])
    rows, errors = [], []
    for number, record in enumerate(reader, start=2):
        if None in record:
            errors.append(RowError(number, "", "more cells than headers"))
            continue
        row: dict[str, dict] = {"input": {}, "output": {}}
        for header, value in record.items():
            value = "" if value is None else value
            if header.startswith("output.") or header in outputs:
                row["output"][header.removeprefix("output.")] = _cell(value)
            else:
                row["input"][header.removeprefix("input.")] = _cell(value)
        problems = _check_row(number, row)
        errors += problems
        if not problems:
            rows.append(row)
    return _finish(rows, errors)


def _finish(rows: list[dict], errors: list[RowError]) -> list[dict]:
    if errors:
        raise DatasetError(errors)
    if not rows:
        raise DatasetError([RowError(0, "", "no rows")])
    if len(rows) > MAX_ROWS:
        raise DatasetError([RowError(MAX_ROWS + 1, "", f"at most {MAX_ROWS} rows per import")])
    return rows


def parse(text: str, fmt: str, outputs: list[str] | None = None) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return parse_jsonl(text)
    if fmt == "csv":
        return parse_csv(text, outputs)
    raise DatasetError([RowError(0, "format", "must be 'jsonl' or 'csv'")])


def import_rows(dataset: Dataset, rows: list[dict[str, Any]], *, replace: bool = False) -> int:
    """Append (or replace with) already-checked rows in one transaction; returns how many."""
    for number, row in enumerate(rows, start=1):
        problems = _check_row(number, row)
        if problems:
            raise DatasetError(problems)
    with transaction.atomic():
        Dataset.objects.select_for_update().filter(id=dataset.id).first()  # serialise positions
        if replace:
            dataset.examples.all().delete()
        start = (dataset.examples.aggregate(m=Max("position"))["m"] or 0) + 1
        Example.objects.bulk_create(
            Example(dataset=dataset, position=start + i, input=row["input"], output=row["output"])
            for i, row in enumerate(rows)
        )
        dataset.save(update_fields=["updated_at"])
    return len(rows)


# --- use with a program ---------------------------------------------------------------------


def label_fields(pipeline: dict) -> list[str]:
    return program_output_fields(pipeline)


def check_examples(pipeline: dict, rows: list[dict[str, Any]]) -> list[RowError]:
    """Every example must carry the program's inputs (typed) and only outputs the program has."""
    outputs = set(program_output_fields(pipeline))
    known_inputs = set(program_input_fields(pipeline))
    errors: list[RowError] = []
    for number, row in enumerate(rows, start=1):
        inputs = {k: v for k, v in row["input"].items() if k in known_inputs}
        try:
            validate_inputs(pipeline, inputs)
        except ProgramSpecError as exc:
            errors += [RowError(number, e.path, e.message) for e in exc.errors]
        unknown = sorted(set(row["output"]) - outputs)
        errors += [
            RowError(number, f"output.{name}", f"not an output of the program (outputs: {sorted(outputs)})")
            for name in unknown
        ]
    return errors


def to_dspy(row: dict[str, Any], input_names: list[str]) -> dspy.Example:
    """A DSPy example: the program's inputs (extra input columns dropped) plus the labels."""
    inputs = {k: v for k, v in row["input"].items() if k in input_names}
    return dspy.Example(**inputs, **row["output"]).with_inputs(*inputs)


@dataclass(frozen=True)
class Split:
    """Train and dev rows of a dataset (seeded)."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]

    @property
    def training_data_hash(self) -> str:
        return training_data_hash(self.train)


def split_rows(rows: list[dict[str, Any]], options: dict[str, Any] | None = None) -> Split:
    """Shuffle with `seed` (default 0), put `dev_fraction` (default 0.3) in dev, optionally cap sizes."""
    options = options or {}
    shuffled = list(rows)
    random.Random(options.get("seed", 0)).shuffle(shuffled)
    n_dev = max(1, round(len(shuffled) * options.get("dev_fraction", DEFAULT_DEV_FRACTION)))
    if len(shuffled) - n_dev < 1:
        raise DatasetError([RowError(0, "", f"{len(rows)} example(s) cannot be split into train and dev")])
    dev, train = shuffled[:n_dev], shuffled[n_dev:]
    if options.get("max_train"):
        train = train[: options["max_train"]]
    if options.get("max_dev"):
        dev = dev[: options["max_dev"]]
    return Split(train=train, dev=dev)


SPLIT_KEYS = {"dev_fraction": float, "seed": int, "max_train": int, "max_dev": int}


def split_errors(options: Any) -> list[dict[str, str]]:
    if not isinstance(options, dict):
        return [{"path": "split", "message": "must be an object"}]
    errors = []
    for key, value in options.items():
        kind = SPLIT_KEYS.get(key)
        if kind is None:
            errors.append(
                {"path": f"split.{key}", "message": f"unknown option; allowed: {sorted(SPLIT_KEYS)}"}
            )
        elif isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            errors.append({"path": f"split.{key}", "message": f"must be {kind.__name__}"})
        elif key == "dev_fraction" and not 0 < value < 1:
            errors.append({"path": "split.dev_fraction", "message": "must be between 0 and 1 (exclusive)"})
        elif kind is int and key != "seed" and value < 1:
            errors.append({"path": f"split.{key}", "message": "must be at least 1"})
    return errors


def training_data_hash(train: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of the training examples (as a set: order does not matter)."""
    canonical = sorted(
        json.dumps({"input": r["input"], "output": r["output"]}, sort_keys=True, separators=(",", ":"))
        for r in train
    )
    payload = "[" + ",".join(canonical) + "]"
    return hashlib.sha256(payload.encode()).hexdigest()


def dataset_rows(dataset: Dataset) -> list[dict[str, Any]]:
    return [e.as_row() for e in dataset.examples.order_by("position")]
