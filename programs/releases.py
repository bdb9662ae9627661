"""Releases, aliases and canaries (docs/releases.md).

A release is a program version and the optimization result it runs with (or none). A program's
*current release* is its latest version with its active result; an alias names another one. A
canary serves a candidate release to `percent` % of the program's default traffic (requests that
name no alias), chosen by a sticky hash, and is promoted or aborted by hand or by its rules.
"""

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import IntegrityError, transaction
from django.utils import timezone
from scipy import stats as scipy_stats

from dspex_site.errors import DomainError
from dspex_site.local_cache import LocalCache
from monitoring import audit
from programs.models import Canary, CognitiveProgram, ProgramAlias, ProgramVersion
from programs.spec import compile_program, input_checker

CONTROL, CANDIDATE = "control", "candidate"


class ReleaseInvalid(DomainError):
    """A body naming a release that does not exist or is not the program's: 400 naming the field."""

    code = "invalid"

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")
        self.message = message

    def problems(self) -> list[dict[str, str]]:
        return [{"path": self.path, "message": self.message}]


class CanaryConflict(DomainError):
    """A canary is already running for the program (409), or none is (for promote/abort)."""

    code = "canary_conflict"


@dataclass(frozen=True)
class Release:
    """What an execution runs: `version`, `result_id`, with the tuned variables, the version's own
    variables and input check; `alias`, `canary_id`, `arm` say how it was chosen."""

    version: int
    result_id: Any
    variables: dict
    tuned_variables: dict
    check_input: Callable[[Any], dict]
    alias: str = ""
    canary_id: Any = None
    arm: str | None = None

    def fields(self) -> dict[str, Any]:
        """The execution's columns for this release."""
        return {
            "program_version": self.version,
            "optimization_result_id": self.result_id,
            "alias": self.alias,
            "canary_id": self.canary_id,
            "arm": self.arm,
        }


def load_release(program: CognitiveProgram, version: int, result_id: Any, path: str = "version") -> Release:
    """The release (version, result) of `program`; ReleaseInvalid naming `path` when it is not one."""
    from optimization.models import OptimizationResult

    spec = ProgramVersion.objects.filter(program=program, version=version).first()
    if spec is None:
        raise ReleaseInvalid(
            path, f"program {program.name} has no version {version} (latest: {program.version})"
        )
    tuned: dict = {}
    if result_id is not None:
        result = OptimizationResult.objects.filter(pk=result_id).first()
        result_path = path.rsplit("version", 1)[0] + "optimization_result"
        if result is None:
            raise ReleaseInvalid(result_path, f"no optimization result {result_id}")
        if result.program_id != program.id:
            raise ReleaseInvalid(result_path, f"result {result_id} belongs to another program")
        try:
            compile_program(spec.pipeline, spec.variables).load_state(result.parameters)
        except Exception as exc:
            raise ReleaseInvalid(
                result_path, f"result {result_id} does not fit version {version}: {exc}"
            ) from None
        tuned = result.variables or {}
    return Release(version, result_id, spec.variables, tuned, input_checker(spec.pipeline))


# --- resolution on the hot path ------------------------------------------------------------------

_aliases: LocalCache[Release | None] = LocalCache("aliases")
_canaries: LocalCache[Canary | None] = LocalCache("canaries")


def forget(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Signal receiver (programs.apps): an alias or canary changed in this process."""
    if isinstance(instance, ProgramAlias):
        _aliases.evict((instance.program_id, instance.name))
    elif isinstance(instance, Canary):
        _canaries.evict(instance.program_id)


def _alias_release(program: CognitiveProgram, name: str) -> Release | None:
    row = ProgramAlias.objects.filter(program=program, name=name).first()
    if row is None:
        return None
    release = load_release(program, row.version, row.optimization_result_id)
    return Release(**{**release.__dict__, "alias": name})


def running_canary(program_id: Any) -> Canary | None:
    return _canaries.get(
        program_id, lambda: Canary.objects.filter(program_id=program_id, status=Canary.Status.RUNNING).first()
    )


def arm_for(canary: Canary, sticky: str) -> str:
    """The arm a sticky key is on: a hash of the canary id and the key, uniform in [0, 100)."""
    digest = hashlib.sha256(f"{canary.id}:{sticky}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64 * 100
    return CANDIDATE if bucket < canary.percent else CONTROL


def sticky_key(canary: Canary, *, session: Any = None, user: Any = None, input_data: Any = None) -> str:
    """What keeps one caller on one arm: the session id, the user (API key users count as theirs),
    or the input; each falls back to the next when the request has none (docs/releases.md)."""
    if canary.sticky_by == Canary.StickyBy.SESSION and session is not None:
        return f"session:{session}"
    if canary.sticky_by in (Canary.StickyBy.SESSION, Canary.StickyBy.USER) and getattr(user, "pk", None):
        return f"user:{user.pk}"
    return "input:" + json.dumps(input_data, sort_keys=True, default=str)


def for_request(
    program: CognitiveProgram,
    alias: str | None,
    *,
    session: Any = None,
    user: Any = None,
    input_data: Any = None,
) -> Release | None:
    """The release a request runs: the alias it names (ReleaseInvalid `alias` if none such), else
    a running canary's arm for this caller, else None (the program's current release)."""
    if alias:
        release = _aliases.get((program.pk, alias), lambda: _alias_release(program, alias))
        if release is None:
            names = sorted(ProgramAlias.objects.filter(program=program).values_list("name", flat=True))
            raise ReleaseInvalid(
                "alias",
                f"program {program.name} has no alias {alias!r} (its aliases: {', '.join(names) or 'none'})",
            )
        return release
    canary = running_canary(program.pk)
    if canary is None:
        return None
    arm = arm_for(canary, sticky_key(canary, session=session, user=user, input_data=input_data))
    version, result = (
        (canary.candidate_version, canary.candidate_result_id)
        if arm == CANDIDATE
        else (canary.control_version, canary.control_result_id)
    )
    release = _arm_release(program, canary, arm, version, result)
    return release


def chooser(
    program: CognitiveProgram, alias: str | None, *, user: Any = None
) -> Callable[[Any], Release | None]:
    """`for_request` per item of a batch: the alias's release for each, or each item's canary arm
    (sticky by the user, else the item's input)."""
    if alias:
        release = for_request(program, alias)
        return lambda item: release
    return lambda item: for_request(program, None, user=user, input_data=item)


_arms: LocalCache[Release] = LocalCache("canary-arms")


def _arm_release(program: CognitiveProgram, canary: Canary, arm: str, version: int, result: Any) -> Release:
    def load() -> Release:
        base = load_release(program, version, result)
        return Release(**{**base.__dict__, "canary_id": canary.id, "arm": arm})

    return _arms.get((canary.id, arm), load)


# --- aliases ---------------------------------------------------------------------------------------


def release_state(program: CognitiveProgram, version: int, result_id: Any) -> dict[str, Any]:
    """The release's pipeline, variables and per-predictor instructions and demos."""
    from optimization.models import OptimizationResult

    spec = ProgramVersion.objects.get(program=program, version=version)
    if result_id is not None:
        state = OptimizationResult.objects.get(pk=result_id).parameters
    else:
        state = compile_program(spec.pipeline, spec.variables).dump_state()
    predictors = {
        name: {
            "instructions": (value.get("signature") or {}).get("instructions"),
            "demos": value.get("demos") or [],
        }
        for name, value in (state or {}).items()
        if isinstance(value, dict) and ("signature" in value or "demos" in value)
    }
    return {"pipeline": spec.pipeline, "variables": spec.variables, "predictors": predictors}


def release_diff(program: CognitiveProgram, before: tuple[int, Any] | None, after: tuple[int, Any]) -> dict:
    """What changed from one release to another: pipeline, variables, and per predictor its
    instructions and demos (docs/releases.md)."""
    new = release_state(program, *after)
    if before is None:
        return {"pipeline": "new", "predictors": sorted(new["predictors"])}
    old = release_state(program, *before)
    changes: dict[str, Any] = {}
    if old["pipeline"] != new["pipeline"]:
        changes["pipeline"] = audit.diff(_steps(old["pipeline"]), _steps(new["pipeline"])) or {
            "changed": True
        }
    variables = audit.diff(old["variables"], new["variables"])
    if variables:
        changes["variables"] = variables
    predictors: dict[str, Any] = {}
    for name in sorted(set(old["predictors"]) | set(new["predictors"])):
        a = old["predictors"].get(name, {"instructions": None, "demos": []})
        b = new["predictors"].get(name, {"instructions": None, "demos": []})
        entry: dict[str, Any] = {}
        if a["instructions"] != b["instructions"]:
            entry["instructions"] = {"from": a["instructions"], "to": b["instructions"]}
        if a["demos"] != b["demos"]:
            entry["demos"] = {
                "from": len(a["demos"]),
                "to": len(b["demos"]),
                "added": [d for d in b["demos"] if d not in a["demos"]][:5],
                "removed": [d for d in a["demos"] if d not in b["demos"]][:5],
            }
        if entry:
            predictors[name] = entry
    if predictors:
        changes["predictors"] = predictors
    return changes


def _steps(pipeline: Any) -> dict[str, Any]:
    steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
    if isinstance(steps, list):
        return {str(s.get("name", i)) if isinstance(s, dict) else str(i): s for i, s in enumerate(steps)}
    return {"pipeline": pipeline}


def set_alias(
    program: CognitiveProgram,
    name: str,
    version: int,
    result_id: Any,
    *,
    channel: str,
    request: Any = None,
    user: Any = None,
) -> tuple[ProgramAlias, bool]:
    """Point alias `name` at (version, result); audited with the diff of what changed."""
    load_release(program, version, result_id)  # ReleaseInvalid naming the field
    with transaction.atomic():
        row = ProgramAlias.objects.select_for_update().filter(program=program, name=name).first()
        before = (row.version, row.optimization_result_id) if row is not None else None
        created = row is None
        if row is None:
            row = ProgramAlias(program=program, name=name)
        row.version, row.optimization_result_id = version, result_id
        actor = user if user is not None else getattr(request, "user", None)
        row.updated_by = actor if getattr(actor, "is_authenticated", False) else None
        row.save()
        audit.record(
            "move_alias",
            program,
            channel=channel,
            request=request,
            user=user,
            changes={
                "alias": name,
                "from": None
                if before is None
                else {"version": before[0], "optimization_result": _s(before[1])},
                "to": {"version": version, "optimization_result": _s(result_id)},
                "diff": release_diff(program, before, (version, result_id)),
            },
        )
    return row, created


def _s(value: Any) -> str | None:
    return None if value is None else str(value)


# --- canaries --------------------------------------------------------------------------------------

DEFAULT_PROMOTE: dict[str, Any] = {
    "metric": "feedback_score",
    "min_executions": 100,
    "min_improvement": 0.0,
    "confidence": 0.95,
}
DEFAULT_ABORT: dict[str, Any] = {"max_error_rate": None, "max_cost_ratio": None, "min_executions": 20}


def check_rules(promote_when: Any, abort_when: Any) -> tuple[dict | None, dict | None]:
    """Validated rules with their defaults; ReleaseInvalid naming the field."""
    promote = None
    if promote_when is not None:
        if not isinstance(promote_when, dict):
            raise ReleaseInvalid("promote_when", "must be an object or null")
        unknown = set(promote_when) - set(DEFAULT_PROMOTE)
        if unknown:
            raise ReleaseInvalid(
                f"promote_when.{sorted(unknown)[0]}", f"unknown (known: {', '.join(DEFAULT_PROMOTE)})"
            )
        promote = {**DEFAULT_PROMOTE, **promote_when}
        if promote["metric"] != "feedback_score":
            raise ReleaseInvalid("promote_when.metric", "must be 'feedback_score'")
        _number(promote, "promote_when", "min_executions", 2, 10**9, integer=True)
        _number(promote, "promote_when", "min_improvement", -1, 1)
        _number(promote, "promote_when", "confidence", 0.5, 0.9999)
    abort = None
    if abort_when is not None:
        if not isinstance(abort_when, dict):
            raise ReleaseInvalid("abort_when", "must be an object or null")
        unknown = set(abort_when) - set(DEFAULT_ABORT)
        if unknown:
            raise ReleaseInvalid(
                f"abort_when.{sorted(unknown)[0]}", f"unknown (known: {', '.join(DEFAULT_ABORT)})"
            )
        abort = {**DEFAULT_ABORT, **abort_when}
        if abort["max_error_rate"] is not None:
            _number(abort, "abort_when", "max_error_rate", 0, 1)
        if abort["max_cost_ratio"] is not None:
            _number(abort, "abort_when", "max_cost_ratio", 0, 10**6)
        _number(abort, "abort_when", "min_executions", 1, 10**9, integer=True)
    return promote, abort


def _number(rules: dict, path: str, key: str, low: float, high: float, integer: bool = False) -> None:
    value = rules[key]
    if (
        isinstance(value, bool)
        or not isinstance(value, int if integer else (int, float))
        or not low <= value <= high
    ):
        kind = "an integer" if integer else "a number"
        raise ReleaseInvalid(f"{path}.{key}", f"must be {kind} in [{low}, {high}]")


def start_canary(
    program: CognitiveProgram,
    candidate_version: int,
    candidate_result: Any,
    percent: float,
    sticky_by: str,
    promote_when: Any = None,
    abort_when: Any = None,
    *,
    channel: str,
    request: Any = None,
    user: Any = None,
    origin: dict[str, Any] | None = None,
) -> Canary:
    """Start a canary of (candidate_version, candidate_result) against the current release;
    audited `start_canary` with the diff (and `origin`: what started it, e.g. a schedule's run)."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < percent < 100:
        raise ReleaseInvalid("percent", "must be a number with 0 < percent < 100")
    if sticky_by not in Canary.StickyBy.values:
        raise ReleaseInvalid("sticky_by", f"must be one of {', '.join(Canary.StickyBy.values)}")
    load_release(program, candidate_version, candidate_result, path="candidate.version")
    promote, abort = check_rules(promote_when, abort_when)
    program.refresh_from_db(fields=["version", "active_result"])
    if (candidate_version, candidate_result) == (program.version, program.active_result_id):
        raise ReleaseInvalid("candidate", "is the program's current release already")
    actor = user if user is not None else getattr(request, "user", None)
    try:
        with transaction.atomic():
            canary = Canary.objects.create(
                program=program,
                percent=float(percent),
                sticky_by=sticky_by,
                control_version=program.version,
                control_result_id=program.active_result_id,
                candidate_version=candidate_version,
                candidate_result_id=candidate_result,
                promote_when=promote,
                abort_when=abort,
                created_by=actor if getattr(actor, "is_authenticated", False) else None,
            )
            audit.record(
                "start_canary",
                program,
                channel=channel,
                request=request,
                user=user,
                changes={
                    "canary": str(canary.id),
                    "percent": canary.percent,
                    "control": {
                        "version": program.version,
                        "optimization_result": _s(program.active_result_id),
                    },
                    "candidate": {"version": candidate_version, "optimization_result": _s(candidate_result)},
                    "diff": release_diff(
                        program,
                        (program.version, program.active_result_id),
                        (candidate_version, candidate_result),
                    ),
                    **({"origin": origin} if origin else {}),
                },
            )
    except IntegrityError:
        raise CanaryConflict(f"A canary of program {program.name} is already running.") from None
    return canary


@dataclass
class ArmFigures:
    executions: int = 0
    finished: int = 0
    failed: int = 0
    scores: list[float] = field(default_factory=list)
    costs: list[float] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.finished if self.finished else None

    @property
    def cost_per_execution(self) -> float | None:
        return float(np.mean(self.costs)) if self.costs else None

    def as_dict(self, confidence: float) -> dict[str, Any]:
        scores = np.array(self.scores, dtype=float)
        mean = float(scores.mean()) if len(scores) else None
        interval = None
        if len(scores) >= 2:
            sem = float(scipy_stats.sem(scores))
            low, high = (
                (mean, mean)
                if sem == 0
                else scipy_stats.t.interval(confidence, len(scores) - 1, loc=mean, scale=sem)
            )
            interval = [round(float(low or 0), 4), round(float(high or 0), 4)]
        durations = np.array(self.durations, dtype=float)
        return {
            "executions": self.executions,
            "finished": self.finished,
            "failed": self.failed,
            "error_rate": None if self.error_rate is None else round(self.error_rate, 4),
            "feedback": {
                "count": len(scores),
                "mean": None if mean is None else round(mean, 4),
                "ci": interval,
                "confidence": confidence,
            },
            "cost_per_execution_usd": None
            if self.cost_per_execution is None
            else round(self.cost_per_execution, 8),
            "latency_ms": {
                "p50": float(np.percentile(durations, 50)) if len(durations) else None,
                "p95": float(np.percentile(durations, 95)) if len(durations) else None,
            },
        }


def figures(canary: Canary) -> dict[str, ArmFigures]:
    from executions.models import CognitiveExecution

    arms = {CONTROL: ArmFigures(), CANDIDATE: ArmFigures()}
    rows = CognitiveExecution.objects.filter(canary=canary).values_list(
        "arm", "status", "feedback_score", "metrics__cost_usd", "duration_ms"
    )
    finished = set(CognitiveExecution.FINISHED) - {CognitiveExecution.Status.CANCELLED}
    for arm, status, score, cost, duration in rows.iterator(chunk_size=2000):
        figures_ = arms.get(arm or "")
        if figures_ is None:
            continue
        figures_.executions += 1
        if status in finished:
            figures_.finished += 1
            figures_.failed += status == CognitiveExecution.Status.FAILED
            if duration is not None:
                figures_.durations.append(duration)
            if isinstance(cost, (int, float)):
                figures_.costs.append(float(cost))
        if score is not None:
            figures_.scores.append(float(score))
    return arms


def comparison(arms: dict[str, ArmFigures], confidence: float) -> dict[str, Any] | None:
    """Welch's t-test of candidate - control feedback scores, with the CI of the difference."""
    a, b = np.array(arms[CANDIDATE].scores), np.array(arms[CONTROL].scores)
    if len(a) < 2 or len(b) < 2:
        return None
    difference = float(a.mean() - b.mean())
    if a.var() == 0 and b.var() == 0:
        low = high = difference
        p_value = 0.0 if difference != 0 else 1.0
    else:
        test = scipy_stats.ttest_ind(a, b, equal_var=False)
        low, high = (float(x) for x in test.confidence_interval(confidence))
        p_value = float(test.pvalue)
    return {
        "difference": round(difference, 4),
        "ci": [round(low, 4), round(high, 4)],
        "confidence": confidence,
        "p_value": None if math.isnan(p_value) else round(p_value, 6),
        "test": "welch_t",
    }


def report(canary: Canary, arms: dict[str, ArmFigures] | None = None) -> dict[str, Any]:
    """The canary's per-arm figures and comparison (of `arms` when the caller counted them)."""
    confidence = float((canary.promote_when or DEFAULT_PROMOTE)["confidence"])
    arms = figures(canary) if arms is None else arms
    return {
        "arms": {name: arm.as_dict(confidence) for name, arm in arms.items()},
        "comparison": comparison(arms, confidence),
    }


def evaluate(canary_id: Any) -> str:
    """Apply the canary's rules once: abort on a broken guard, promote when the candidate is
    better with the confidence asked, else nothing. Returns what was decided."""
    canary = (
        Canary.objects.filter(pk=canary_id, status=Canary.Status.RUNNING).select_related("program").first()
    )
    if canary is None:
        return "not running"
    arms = figures(canary)
    candidate, control = arms[CANDIDATE], arms[CONTROL]
    abort = canary.abort_when
    if abort and candidate.finished >= abort["min_executions"]:
        rate = candidate.error_rate or 0.0
        if abort["max_error_rate"] is not None and rate > abort["max_error_rate"]:
            return finish(
                canary,
                Canary.Status.ABORTED,
                f"aborted: candidate error rate {rate:.1%} > {abort['max_error_rate']:.1%} "
                f"(n = {candidate.finished:,}; control {(control.error_rate or 0):.1%})",
                channel="rules",
                arms=arms,
            )
        cand_cost, ctrl_cost = candidate.cost_per_execution, control.cost_per_execution
        if abort["max_cost_ratio"] is not None and cand_cost is not None and ctrl_cost:
            ratio = cand_cost / ctrl_cost
            if ratio > abort["max_cost_ratio"]:
                return finish(
                    canary,
                    Canary.Status.ABORTED,
                    f"aborted: candidate cost per execution ${cand_cost:.6f} is {ratio:.2f}x the "
                    f"control's ${ctrl_cost:.6f} (> {abort['max_cost_ratio']:g}x)",
                    channel="rules",
                    arms=arms,
                )
    promote = canary.promote_when
    if promote:
        n_a, n_b = len(candidate.scores), len(control.scores)
        if min(n_a, n_b) < promote["min_executions"]:
            return "waiting"
        compared = comparison(arms, promote["confidence"])
        if compared is not None and compared["ci"][0] >= promote["min_improvement"]:
            low, high = compared["ci"]
            return finish(
                canary,
                Canary.Status.PROMOTED,
                f"promoted: feedback {np.mean(candidate.scores):.2f} vs {np.mean(control.scores):.2f}, "
                f"{promote['confidence']:.0%} CI of the difference [{low:.2f}, {high:.2f}], "
                f"n = {n_a:,}/{n_b:,}",
                channel="rules",
                arms=arms,
            )
    return "waiting"


def decide_by_hand(canary: Canary, status: str, *, channel: str, request: Any = None) -> str:
    """Promote or abort a running canary on a person's word: the API's `canary/promote|abort` and
    the console's buttons both come here. CanaryConflict when it is no longer running."""
    user = getattr(request, "user", None)
    who = getattr(user, "username", "") or "a user"
    verb = "promoted" if status == Canary.Status.PROMOTED else "aborted"
    return finish(canary, status, f"{verb} by {who}", channel=channel, request=request)


def finish(
    canary: Canary,
    status: str,
    reason: str,
    *,
    channel: str,
    request: Any = None,
    user: Any = None,
    arms: dict[str, ArmFigures] | None = None,
) -> str:
    """Promote (the candidate becomes the program's current release) or abort; audited, logged.
    `arms`: the figures the rules decided on, kept with the decision (so its figures and its
    reason agree even when feedback arrives meanwhile); else counted now."""
    from optimization import results
    from optimization.models import OptimizationResult

    with transaction.atomic():
        locked = Canary.objects.select_for_update().filter(pk=canary.pk, status=Canary.Status.RUNNING).first()
        if locked is None:
            raise CanaryConflict(f"Canary {canary.pk} is no longer running.")
        program = CognitiveProgram.objects.select_for_update().get(pk=locked.program_id)
        figures_ = report(locked, arms)
        if status == Canary.Status.PROMOTED:
            if locked.candidate_version != program.version:
                spec = ProgramVersion.objects.get(program=program, version=locked.candidate_version)
                program.pipeline, program.variables = spec.pipeline, spec.variables
                program.save()  # the candidate's version becomes the latest (a new number)
            result = (
                OptimizationResult.objects.get(pk=locked.candidate_result_id)
                if locked.candidate_result_id
                else None
            )
            results.set_active(
                program, result, channel=channel if channel != "rules" else "api", request=request, user=user
            )
        now = timezone.now()
        decision = {
            "at": now.isoformat(),
            "decision": status,
            "reason": reason,
            "by": channel,
            "figures": figures_,
        }
        Canary.objects.filter(pk=locked.pk).update(
            status=status, finished_at=now, outcome=reason, decisions=[*locked.decisions, decision]
        )
        locked.status, locked.outcome = status, reason
        locked.save(update_fields=["status", "outcome"])  # sends post_save: this process forgets it
        audit.record(
            "promote_canary" if status == Canary.Status.PROMOTED else "abort_canary",
            program,
            channel="api" if channel == "rules" else channel,
            request=request,
            user=user,
            changes={"canary": str(locked.pk), "reason": reason, "by": channel, "figures": figures_},
        )
    # This process's runnable-program cache forgets the program's old current release at once
    # (other processes within DSPEX_LOCAL_CACHE_S, as for any program change).
    from executions.runner import forget_program

    forget_program(None, program)
    canary.status, canary.outcome = status, reason
    return status
