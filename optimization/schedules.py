"""Scheduled optimizations on django-celery-beat, and the skip rule for unchanged inputs."""

import json
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from dspex_site.beat import save_periodic_task, schedule_fields
from dspex_site.celery import TASKS, Cron, Every
from monitoring import audit
from optimization import datasets, from_executions, runner
from optimization.models import Dataset, OptimizationResult, OptimizationRun, OptimizationSchedule

TASK = "optimization.scheduled"


def cron_errors(cron: str) -> list[str]:
    parts = cron.split()
    return [] if len(parts) == 5 else ['must have five fields: "minute hour day month weekday"']


def sync_periodic_task(schedule: OptimizationSchedule) -> PeriodicTask:
    """Create or update the beat entry that fires this schedule (cron or interval); its task and
    queue come from the task table (dspex_site.celery.TASKS), like every other beat row."""
    if schedule.cron:
        minute, hour, day, month, weekday = schedule.cron.split()
        when: Every | Cron = Cron(minute, hour, day, month, weekday)
    else:
        when = Every(schedule.interval_s or 0)
    fields: dict[str, Any] = {
        "task": TASK,
        "args": json.dumps([str(schedule.id)]),
        "enabled": schedule.enabled,
        "queue": TASKS[TASK].queue.value,
        **schedule_fields(when),
    }
    task, _ = save_periodic_task(schedule.periodic_task, f"optimization:{schedule.id}", fields)
    if schedule.periodic_task_id != task.id:
        OptimizationSchedule.objects.filter(id=schedule.id).update(periodic_task=task)
        schedule.periodic_task = task
    return task


def last_result(schedule: OptimizationSchedule) -> OptimizationResult | None:
    run = (
        schedule.runs.filter(status=OptimizationRun.Status.SUCCEEDED, result__isnull=False)
        .select_related("result")
        .order_by("-created_at")
        .first()
    )
    return run.result if run else None


# --- validation (the API's serializer and the console's form both call `check_schedule`) -------

FROM_EXECUTIONS_DEFAULTS: dict[str, Any] = {
    "window_s": None,
    "min_score": None,
    "use_corrected_output": False,
    "only_succeeded": True,
    "limit": datasets.MAX_ROWS,
    "release": None,
}
CANARY_KEYS = ("percent", "sticky_by", "promote_when", "abort_when")


def check_schedule(
    program: Any,
    dataset: Any,
    from_executions: Any,
    optimizer: Any,
    metric: Any,
    config: Any,
    split: Any,
    apply: bool,
    canary: Any,
    cron: str,
    interval_s: Any,
) -> tuple[dict | None, dict | None]:
    """Everything a schedule can be checked for before it fires; raises RunRequestError (paths
    such as `from_executions.min_score`, `canary.promote_when.confidence`). Returns the
    `from_executions` and `canary` settings with their defaults filled in."""
    errors: list[dict[str, str]] = []
    if program is not None and dataset is not None and dataset.project_id != program.project_id:
        errors.append({"path": "dataset", "message": "The dataset must be in the program's project."})
    if (dataset is None) == (from_executions is None):
        errors.append({"path": "dataset", "message": "Give exactly one of dataset and from_executions."})
    if bool(cron) == bool(interval_s):
        errors.append({"path": "cron", "message": "Give exactly one of cron and interval_s."})
    elif cron:
        errors += [{"path": "cron", "message": m} for m in cron_errors(cron)]
    rules = None if from_executions is None else _from_executions(program, from_executions, errors)
    canary_settings = None if canary is None else _canary(canary, errors)
    if canary is not None and apply:
        errors.append(
            {
                "path": "apply",
                "message": "A schedule with a canary does not apply its result: set apply false.",
            }
        )
    if errors:
        raise runner.RunRequestError(errors, code="invalid")
    runner.check_request(program, dataset, optimizer, metric, config or {}, split or {})
    return rules, canary_settings


def _from_executions(program: Any, value: Any, errors: list[dict[str, str]]) -> dict | None:
    path = "from_executions"
    if not isinstance(value, dict):
        errors.append({"path": path, "message": "must be an object or null"})
        return None
    unknown = sorted(set(value) - set(FROM_EXECUTIONS_DEFAULTS))
    errors += [
        {"path": f"{path}.{key}", "message": f"unknown (known: {', '.join(FROM_EXECUTIONS_DEFAULTS)})"}
        for key in unknown
    ]
    rules = {**FROM_EXECUTIONS_DEFAULTS, **value}
    checks: list[tuple[str, Any, str]] = [
        (
            "window_s",
            lambda v: v is None or (_int(v) and 60 <= v <= 366 * 86400),
            "null or seconds in [60, 31622400]",
        ),
        ("min_score", lambda v: v is None or (_number(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
        ("use_corrected_output", lambda v: isinstance(v, bool), "true or false"),
        ("only_succeeded", lambda v: isinstance(v, bool), "true or false"),
        (
            "limit",
            lambda v: _int(v) and 1 <= v <= datasets.MAX_ROWS,
            f"an integer in [1, {datasets.MAX_ROWS}]",
        ),
    ]
    for key, ok, expected in checks:
        if not ok(rules[key]):
            errors.append({"path": f"{path}.{key}", "message": f"must be {expected}"})
    release = rules["release"]
    if release is not None:
        if (
            not isinstance(release, dict)
            or not isinstance(release.get("version"), int)
            or set(release)
            - {
                "version",
                "optimization_result",
            }
        ):
            errors.append(
                {
                    "path": f"{path}.release",
                    "message": 'must be {"version": n, "optimization_result": id or null}',
                }
            )
        elif program is not None:
            from programs import releases

            result = release.get("optimization_result")
            try:
                releases.load_release(program, release["version"], result, path=f"{path}.release.version")
            except releases.ReleaseInvalid as exc:
                errors += exc.problems()
            except (ValueError, ValidationError):  # not a UUID
                errors.append(
                    {"path": f"{path}.release.optimization_result", "message": "must be a result id"}
                )
            rules["release"] = {
                "version": release["version"],
                "optimization_result": None if result is None else str(result),
            }
    return rules


def _canary(value: Any, errors: list[dict[str, str]]) -> dict | None:
    from programs import releases
    from programs.models import Canary

    if not isinstance(value, dict):
        errors.append({"path": "canary", "message": "must be an object or null"})
        return None
    unknown = sorted(set(value) - set(CANARY_KEYS))
    errors += [
        {"path": f"canary.{key}", "message": f"unknown (known: {', '.join(CANARY_KEYS)})"} for key in unknown
    ]
    percent, sticky_by = value.get("percent"), value.get("sticky_by", Canary.StickyBy.SESSION.value)
    if not isinstance(percent, (int, float)) or isinstance(percent, bool) or not 0 < percent < 100:
        errors.append({"path": "canary.percent", "message": "must be a number with 0 < percent < 100"})
    if sticky_by not in Canary.StickyBy.values:
        errors.append(
            {"path": "canary.sticky_by", "message": f"must be one of {', '.join(Canary.StickyBy.values)}"}
        )
    try:
        promote, abort = releases.check_rules(value.get("promote_when"), value.get("abort_when"))
    except releases.ReleaseInvalid as exc:
        errors.append({"path": f"canary.{exc.path}", "message": exc.message})
        return None
    return {"percent": percent, "sticky_by": sticky_by, "promote_when": promote, "abort_when": abort}


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- ticks -----------------------------------------------------------------------------------------


def _note(schedule: OptimizationSchedule, message: str) -> None:
    schedule.last_fired_at, schedule.last_message = timezone.now(), message
    OptimizationSchedule.objects.filter(id=schedule.id).update(
        last_fired_at=schedule.last_fired_at, last_message=message
    )


def start_scheduled_run(schedule_id: str) -> OptimizationRun | None:
    """Create this tick's run: pending, or skipped (saying why) when nothing changed since the
    last result. None when the tick starts nothing: the schedule is gone, its previous run is
    still in progress (created less than the 4 h hard limit ago), a canary of the program is
    running (a schedule with a canary), or no execution can be an example yet; the schedule's
    `last_message` says which."""
    schedule = (
        OptimizationSchedule.objects.select_related("program", "dataset").filter(id=schedule_id).first()
    )
    if schedule is None:
        return None
    program = schedule.program
    # A run in progress holds the next tick back, for at most the runs' hard time limit (a run
    # whose message was lost must not stop its schedule for good).
    busy = schedule.runs.filter(
        status__in=[OptimizationRun.Status.PENDING, OptimizationRun.Status.RUNNING],
        created_at__gte=timezone.now() - timedelta(seconds=runner.HARD_LIMIT_S),
    ).first()
    if busy is not None:
        _note(schedule, f"Nothing started: run {busy.id} of this schedule is still {busy.status}.")
        return None
    if schedule.canary:
        from programs.models import Canary

        running = Canary.objects.filter(program=program, status=Canary.Status.RUNNING).first()
        if running is not None:
            _note(
                schedule,
                f"Nothing started: canary {running.id} of the program is running; its decision comes first.",
            )
            return None
    if schedule.from_executions is not None:
        return _start_from_executions(schedule)
    assert schedule.dataset is not None  # check_schedule: exactly one of dataset, from_executions
    with transaction.atomic():
        run = _create_run(schedule, schedule.dataset)
        split = datasets.split_rows(datasets.dataset_rows(schedule.dataset), schedule.split)
        _skip_if_unchanged(schedule, run, split.training_data_hash)
    _note(schedule, f"Run {run.id}: {run.status}." + (f" {run.message}" if run.message else ""))
    return run


def _create_run(schedule: OptimizationSchedule, dataset: Dataset) -> OptimizationRun:
    return runner.create_run(
        schedule.program,
        dataset,
        schedule.optimizer,
        schedule.metric,
        config=schedule.config,
        split=schedule.split,
        apply=schedule.apply,
        schedule=schedule,
        canary=schedule.canary,
    )


def _skip_if_unchanged(schedule: OptimizationSchedule, run: OptimizationRun, training_hash: str) -> bool:
    previous = last_result(schedule)
    program = schedule.program
    if (
        previous is None
        or previous.program_version != program.version
        or previous.training_data_hash != training_hash
    ):
        return False
    run.status = OptimizationRun.Status.SKIPPED
    run.finished_at = timezone.now()
    run.message = (
        f"Skipped: program version {program.version} and training data "
        f"{training_hash[:12]} are unchanged since result {previous.id}."
    )
    run.save(update_fields=["status", "finished_at", "message"])
    return True


def _start_from_executions(schedule: OptimizationSchedule) -> OptimizationRun | None:
    """Build this tick's examples from the program's executions in the window; write them as a
    new dataset (audited, channel `system`) and create the run on it, all in one transaction.
    Unchanged training data since the last result: the run is recorded skipped, on the dataset
    that result was made from, and no dataset is written."""
    rules = schedule.from_executions or {}
    now = timezone.now()
    release = rules.get("release")
    criteria = from_executions.Criteria(
        program=schedule.program,
        min_score=rules.get("min_score"),
        since=now - timedelta(seconds=rules["window_s"]) if rules.get("window_s") else None,
        until=now,
        use_corrected_output=bool(rules.get("use_corrected_output")),
        only_succeeded=rules.get("only_succeeded", True),
        limit=rules.get("limit") or datasets.MAX_ROWS,
        release=None if release is None else (release["version"], release.get("optimization_result")),
    )
    built = from_executions.build(criteria)
    if not built.rows:
        _note(schedule, f"Nothing started: {from_executions.NoExamples(schedule.program, built)}")
        return None
    try:
        split = datasets.split_rows(built.rows, schedule.split)
    except datasets.DatasetError as exc:
        _note(schedule, f"Nothing started: {len(built.rows)} example(s) from executions: {exc}")
        return None
    previous = last_result(schedule)
    previous_run = previous.runs.filter(schedule=schedule).first() if previous is not None else None
    if (
        previous is not None
        and previous_run is not None
        and previous.program_version == schedule.program.version
        and previous.training_data_hash == split.training_data_hash
    ):
        with transaction.atomic():
            run = _create_run(schedule, previous_run.dataset)
            _skip_if_unchanged(schedule, run, split.training_data_hash)
        _note(schedule, f"Run {run.id}: {run.status}. {run.message}")
        return run
    name = f"{schedule.name} {now:%Y-%m-%d %H:%M:%S} {built.content_hash[:8]}"

    def audited(dataset: Dataset, build: from_executions.Build) -> None:
        changes = {"from_executions": criteria.as_dict(), "schedule": str(schedule.id), **build.report()}
        changes.pop("skipped_examples")
        audit.record("create", dataset, channel="system", changes=changes)

    try:
        with transaction.atomic():
            dataset, _ = from_executions.create_dataset(
                criteria,
                name=name,
                description=f"Built by schedule {schedule.name} from executions of {schedule.program.name}.",
                audit_record=audited,
                built=built,
            )
            run = _create_run(schedule, dataset)
    except (runner.RunRequestError, datasets.DatasetError, from_executions.NameTaken) as exc:
        _note(schedule, f"Nothing started: {exc}")
        return None
    _note(
        schedule,
        f"Run {run.id}: {run.status}, on dataset {dataset.name!r} ({len(built.rows)} examples, "
        f"{built.corrected} corrected, {sum(built.skipped.values())} executions skipped).",
    )
    return run
