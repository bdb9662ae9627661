"""The optimization workflow: create a run, then claim it and optimize (baseline, compile, score, save).

A run is claimed by one worker at a time (conditional UPDATE, dspex_site.jobs). Every LM
call goes through the gateway with the LLM cache on, and every source of randomness is seeded,
so an attempt that restarts after its worker died sends the same requests again and the finished
ones are replayed from the cache instead of being paid for twice.
"""

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import dspy
from django.conf import settings
from django.db import transaction

from dspex_site.celery import TASKS
from dspex_site.errors import DomainError
from dspex_site.jobs import heartbeat
from llm import gateway, resilience
from optimization import datasets, metrics, optimizers, variable_search
from optimization.models import Dataset, OptimizationResult, OptimizationRun
from optimization.progress import CANCELLED, COST_BUDGET, TIME_LIMIT, RunMonitor, RunStopped
from programs import retrieval
from programs.models import CognitiveProgram, ProgramVersion
from programs.spec import ProgramSpecError, StateMismatchError, compile_program
from projects import keys

logger = logging.getLogger(__name__)

# The Celery hard limit of `optimization.run` (4 h): a run never plans to outlive it. The margin
# puts our own deadline before Celery's soft limit (hard - 300 s), so a run that hits it is stopped
# by us, keeping its best candidate, rather than interrupted by Celery.
HARD_LIMIT_S = TASKS["optimization.run"].hard_s
SAVE_MARGIN_S = 600


class RunRequestError(DomainError, ValueError):
    """A run that cannot be started as asked; `errors` carry request paths (`config.bsize`)."""

    def __init__(self, errors: list[dict[str, str]], code: str = "invalid_optimization") -> None:
        super().__init__("; ".join(f"{e['path']}: {e['message']}" for e in errors))
        self.errors, self.code = errors, code

    def problems(self) -> list[dict[str, str]]:
        return self.errors


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


# --- creating ---------------------------------------------------------------------------------


def check_request(
    program: CognitiveProgram,
    dataset: Dataset | None,
    optimizer: str,
    metric: Any,
    config: dict,
    split: dict,
) -> None:
    """Everything that can be checked before a run is queued; raises RunRequestError. Without a
    `dataset` (a schedule that builds one from executions at each tick) what needs the examples
    is checked when they exist."""
    errors = datasets.split_errors(split)
    try:
        metrics.build_metric(metric)
    except metrics.MetricError as exc:
        raise RunRequestError([{"path": exc.path, "message": exc.message}], code=exc.code) from exc
    rows = datasets.dataset_rows(dataset) if dataset is not None else []
    train_size = None
    if not errors and dataset is not None:
        try:
            train_size = len(datasets.split_rows(rows, split).train)
        except datasets.DatasetError as exc:
            errors += [{"path": "dataset", "message": str(exc)}]
    errors += optimizers.config_errors(optimizer, config, train_size)
    if optimizer == "VariableSearch" and not errors:
        try:
            variable_search.combinations(program.variables, config)
        except variable_search.SearchConfigError as exc:
            errors += exc.errors
    if not errors:
        errors += [
            {"path": f"dataset.examples[{e.row}].{e.path}", "message": e.message}
            for e in datasets.check_examples(program.pipeline, rows)[:50]
        ]
    if errors:
        raise RunRequestError(errors)


def create_run(
    program: CognitiveProgram,
    dataset: Dataset,
    optimizer: str,
    metric: Any,
    *,
    config: dict | None = None,
    split: dict | None = None,
    apply: bool = False,
    time_limit_s: int | None = None,
    cost_budget_usd: float | None = None,
    user: Any = None,
    schedule: Any = None,
    canary: dict | None = None,
) -> OptimizationRun:
    """Validate and store a pending run of the program's current version (enqueue it on commit)."""
    config, split = config or {}, split or {}
    check_request(program, dataset, optimizer, metric, config, split)
    return OptimizationRun.objects.create(
        program=program,
        program_version=program.version,
        dataset=dataset,
        optimizer=optimizer,
        metric=metric,
        config=config,
        split=split,
        apply=apply,
        canary=canary,
        time_limit_s=min(time_limit_s or HARD_LIMIT_S, HARD_LIMIT_S),
        cost_budget_usd=cost_budget_usd,
        schedule=schedule,
        created_by=user if getattr(user, "is_authenticated", False) else None,
        api_key=keys.key_of_user(user),
    )


# --- running ----------------------------------------------------------------------------------


def run_optimization(run_id: Any) -> OptimizationRun | None:
    """Claim and run an optimization; None when another worker holds it (or it is finished)."""
    attempt = OptimizationRun.objects.claim(run_id)
    if attempt is None:
        return None
    run = OptimizationRun.objects.select_related("program", "dataset").get(id=run_id)
    run.hold(attempt)
    elapsed = 0.0 if run.started_at is None else time.time() - run.started_at.timestamp()
    budget = min(run.time_limit_s, HARD_LIMIT_S - SAVE_MARGIN_S) - elapsed
    unit = optimizers.TRIAL_UNITS.get(run.optimizer, "evaluations")
    monitor = RunMonitor(
        deadline=time.monotonic() + max(budget, 0),
        cost_budget=run.cost_budget_usd,
        trials_total=None,
        unit=unit,
    )

    def write_progress() -> None:
        # Each heartbeat that finds the run still ours also records how far it got.
        if not run.beat({**monitor.snapshot(), "attempt": attempt}):
            monitor.request_stop(CANCELLED)

    # Cancelled, or released/taken over by another attempt: stop at the next LM call.
    holding = heartbeat.hold(run, on_lost=lambda: monitor.request_stop(CANCELLED), on_beat=write_progress)
    OptimizationRun.sync_program_status(run.program_id)
    try:
        Optimization(run, attempt, monitor).execute()
    finally:
        heartbeat.release(holding)
        OptimizationRun.sync_program_status(run.program_id)
    run.refresh_from_db()
    return run


@dataclass
class Scored:
    score: float
    program: dspy.Module


class Optimization:
    """One attempt at one run."""

    def __init__(self, run: OptimizationRun, attempt: int, monitor: RunMonitor) -> None:
        self.run, self.attempt, self.monitor = run, attempt, monitor
        self.threads = run.config.get("num_threads", _setting("DSPEX_OPTIMIZATION_THREADS", 1))
        self.started = time.monotonic()

    def execute(self) -> None:
        run, monitor = self.run, self.monitor
        baseline: Scored | None = None
        try:
            keys.check(run.api_key_id)  # revoked or expired since it was queued: refused
            self.prepare()
            # Optimization traffic: its own concurrency pool, and it never takes the rate-limit
            # reserve kept for interactive calls (llm.resilience).
            with (
                resilience.traffic(
                    resilience.OPTIMIZATION,
                    program_id=run.program_id,
                    project_id=run.program.project_id,
                    key_id=run.api_key_id,
                ),
                retrieval.for_program(run.program_id),
                dspy.context(lm=gateway.lm_for(None), callbacks=[monitor]),
            ):
                monitor.phase = "baseline"
                baseline = self.score(self.student)
                monitor.baseline_score = baseline.score
                monitor.phase = "compiling"
                compiled, extra = self.compile()
                monitor.phase = "scoring"
                optimized = self.score(compiled)
            monitor.phase = "saving"
            self.save(baseline, optimized.score, compiled, extra)
        except RunStopped as stop:
            self.stopped(stop.reason, baseline)
        except keys.KeyRefused as exc:
            self.fail(exc.code, str(exc))
        except (datasets.DatasetError, metrics.MetricError, RunRequestError, ProgramSpecError) as exc:
            self.fail("invalid", str(exc))
        except Exception as exc:
            logger.exception("optimization run %s failed", run.id)
            self.fail(type(exc).__name__, str(exc)[:2000])

    # --- phases -------------------------------------------------------------------------------
    def prepare(self) -> None:
        run, monitor = self.run, self.monitor
        monitor.phase = "loading"
        spec = ProgramVersion.objects.get(program_id=run.program_id, version=run.program_version)
        self.declarations = spec.variables
        rows = datasets.dataset_rows(run.dataset)
        problems = datasets.check_examples(spec.pipeline, rows)
        if problems:
            raise datasets.DatasetError(problems, f"{len(problems)} example(s) do not fit the program")
        split = datasets.split_rows(rows, run.split)
        self.training_data_hash = split.training_data_hash
        self.spec = spec
        self.student, self.start_result = self.current_program()
        names = list(self.student.input_fields)
        self.train = [datasets.to_dspy(r, names) for r in split.train]
        self.dev = [datasets.to_dspy(r, names) for r in split.dev]
        self.metric = monitor.counting_metric(metrics.build_metric(run.metric))
        self.dev_metric = metrics.build_metric(run.metric)
        total = optimizers.trials_total(run.optimizer, run.config, len(self.train))
        if run.optimizer == "VariableSearch":
            total = len(variable_search.combinations(self.declarations, run.config))
        monitor.trials_total = total

    def current_program(self, values: dict | None = None) -> tuple[dspy.Module, OptimizationResult | None]:
        """The program as executions run it now: its active result's state and variables, if any."""
        result = self.run.program.active_result
        if result is not None and result.program_id != self.run.program_id:
            result = None
        base_values = dict(result.variables) if result is not None else {}
        declarations = variable_search.with_defaults(self.declarations, {**base_values, **(values or {})})
        module = compile_program(self.spec.pipeline, declarations)
        module.lm_for = functools.partial(gateway.lm_for, cache=True)
        if result is not None:
            try:
                module.load_state(result.parameters)
            except StateMismatchError:
                logger.warning(
                    "active result %s does not fit version %s; starting plain", result.id, self.spec.version
                )
                result = None
        return module, result

    def score(self, program: dspy.Module, devset: list | None = None) -> Scored:
        devset = self.dev if devset is None else devset
        evaluate = dspy.Evaluate(
            devset=devset,
            metric=self.dev_metric,
            num_threads=self.threads,
            display_progress=False,
            max_errors=len(devset) * 10 + 10,
        )
        return Scored(round(float(evaluate(program).score) / 100, 6), program)

    def compile(self) -> tuple[dspy.Module, dict]:
        run = self.run
        if run.optimizer == "VariableSearch":
            return self.variable_search()
        config = {k: v for k, v in run.config.items()}
        compiler = optimizers.build(run.optimizer, config, self.metric, self.threads)
        compiled = compiler.compile(self.student, self.train, self.dev)
        if self.monitor.unit == "compile":
            self.monitor.trial()
        return compiled, {"variables": dict(self.start_result.variables) if self.start_result else {}}

    def variable_search(self) -> tuple[dspy.Module, dict]:
        monitor = self.monitor
        state = self.student.dump_state()

        def score(values: dict) -> float:
            program, _ = self.current_program(values)
            return self.score(program, self.train).score

        def costs() -> dict:
            snap = monitor.snapshot()
            return {
                "lm_calls": snap["lm_calls"],
                "cost_usd": snap["cost_usd"],
                "tokens": snap["prompt_tokens"] + snap["completion_tokens"],
            }

        def on_trial(values: dict, value: float) -> None:
            monitor.trial()
            if monitor.best_score is None or value > monitor.best_score:
                self.best_values = values
            monitor.candidate(value, None, state=state)

        best, table = variable_search.search(self.declarations, self.run.config, score, costs, on_trial)
        program, _ = self.current_program(best)
        base = dict(self.start_result.variables) if self.start_result else {}
        return program, {"variables": {**base, **best}, "combinations": table}

    # --- outcomes -----------------------------------------------------------------------------
    def metrics_base(self, baseline: Scored | None) -> dict[str, Any]:
        snap = self.monitor.snapshot()
        # Also called for runs that failed before a start result was looked up.
        start_result: OptimizationResult | None = getattr(self, "start_result", None)
        return {
            "metric": metrics.metric_name(self.run.metric),
            "baseline_score": baseline.score if baseline else None,
            "dev_size": len(getattr(self, "dev", [])),
            "train_size": len(getattr(self, "train", [])),
            "lm_calls": snap["lm_calls"],
            "cache_hits": snap["cache_hits"],
            "prompt_tokens": snap["prompt_tokens"],
            "completion_tokens": snap["completion_tokens"],
            "tokens": snap["prompt_tokens"] + snap["completion_tokens"],
            "cost_usd": snap["cost_usd"],
            "duration_s": round(time.monotonic() - self.started, 2),
            "attempt": self.attempt,
            "started_from_result": str(start_result.id) if start_result else None,
        }

    def save(self, baseline: Scored, optimized: float, compiled: dspy.Module, extra: dict) -> None:
        performance = {**self.metrics_base(baseline), "optimized_score": optimized}
        if "combinations" in extra:
            performance["combinations"] = extra["combinations"]
        self.store(compiled.dump_state(), extra.get("variables", {}), performance, message="")

    def store(self, parameters: dict, variables: dict, performance: dict, message: str) -> None:
        run = self.run
        with transaction.atomic():
            result = OptimizationResult.objects.create(
                program_id=run.program_id,
                program_version=run.program_version,
                optimizer_type=run.optimizer,
                parameters=parameters,
                variables=variables,
                performance_metrics=performance,
                training_data_hash=self.training_data_hash,
            )
            program = CognitiveProgram.objects.select_for_update().get(id=run.program_id)
            history = [*program.optimization_history, result.history_entry()]
            fields: dict[str, Any] = {"optimization_history": history}
            applied = run.apply and not run.canary and result.beats_baseline
            if applied:
                fields["active_result"] = result
            CognitiveProgram.objects.filter(id=program.id).update(**fields)
            progress = {**self.monitor.snapshot(), "phase": "done", "attempt": self.attempt}
            if run.apply and not run.canary:
                message = (message + " " if message else "") + (
                    "Applied: it beats the baseline."
                    if applied
                    else "Not applied: it does not beat the baseline."
                )
            if run.canary:
                message = (message + " " if message else "") + self.start_canary(program, result)
            finished = run.finish(
                OptimizationRun.Status.SUCCEEDED,
                result=result,
                progress=progress,
                message=message.strip(),
            )
            if not finished:  # cancelled or taken over while saving: keep nothing half-done
                transaction.set_rollback(True)

    def start_canary(self, program: CognitiveProgram, result: OptimizationResult) -> str:
        """The run's `canary` (a schedule's, docs/releases.md "The loop"): a result that beats the
        baseline becomes the candidate of a canary against the current release, in the
        transaction that stores it; what happened, in words, for the run's message."""
        from programs import releases

        if not result.beats_baseline:
            return "No canary: it does not beat the baseline."
        settings_ = self.run.canary or {}
        try:
            canary = releases.start_canary(
                program,
                self.run.program_version,
                result.id,
                float(settings_.get("percent") or 0),
                settings_.get("sticky_by", "session"),
                settings_.get("promote_when"),
                settings_.get("abort_when"),
                channel="system",
                origin={"optimization_run": str(self.run.id), "schedule": _s(self.run.schedule_id)},
            )
        except (releases.CanaryConflict, releases.ReleaseInvalid) as exc:
            logger.warning("optimization run %s: no canary started: %s", self.run.id, exc)
            return f"No canary started: {exc}"
        return f"Canary {canary.id} started: {canary.percent:g}% of the default traffic runs the result."

    def stopped(self, reason: str, baseline: Scored | None) -> None:
        run, monitor = self.run, self.monitor
        if reason in (TIME_LIMIT, COST_BUDGET):
            what = "time limit" if reason == TIME_LIMIT else "cost budget"
            if monitor.best_state is not None and baseline is not None:
                performance = {
                    **self.metrics_base(baseline),
                    "optimized_score": None,
                    "candidate_score": monitor.best_score,
                    "stopped_by": reason,
                }
                self.store(
                    monitor.best_state,
                    getattr(self, "best_values", {}),
                    performance,
                    f"Stopped by the {what}; kept the best candidate so far (scored {monitor.best_score} "
                    "by the optimizer, not re-scored on dev).",
                )
                return
            self.fail(reason, f"Stopped by the {what} before any candidate was scored; nothing to keep.")
            return
        # Cancelled (the row already says so) or taken over by another worker: record what we did.
        OptimizationRun.objects.filter(id=run.id, status=OptimizationRun.Status.CANCELLED).update(
            progress={**monitor.snapshot(), "phase": "cancelled", "attempt": self.attempt}
        )

    def fail(self, kind: str, message: str) -> None:
        progress = {**self.monitor.snapshot(), "attempt": self.attempt}
        self.run.finish(
            OptimizationRun.Status.FAILED,
            error={"type": kind, "message": message},
            message=message[:2000],
            progress=progress,
        )
