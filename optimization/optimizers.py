"""The optimizers a run can name: their config schemas (validated with clear errors) and builders.

Every DSPy optimizer is listed with the config keys DSPex lets through, their types and ranges,
and whether a key goes to the constructor or to `compile()`. Anything else is refused with the
JSON path of the offending key, so a typo never silently becomes a default.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy

from llm import gateway
from programs.spec.numbers import check_number

INIT, COMPILE = "init", "compile"


@dataclass(frozen=True)
class Option:
    kind: type | tuple[str, ...]  # a Python type, or the allowed string values
    to: str = INIT
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any) -> str | None:
        if isinstance(self.kind, tuple):
            return None if value in self.kind else f"must be one of {list(self.kind)}"
        if self.kind in (int, float):
            return check_number(value, integer=self.kind is int, low=self.low, high=self.high)
        if self.kind is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind is str:
            return None if isinstance(value, str) and value.strip() else "must be a non-empty string"
        if self.kind is dict:
            return None if isinstance(value, dict) else "must be an object"
        return None


DEMOS = {
    "max_bootstrapped_demos": Option(int, low=0, high=64),
    "max_labeled_demos": Option(int, low=0, high=64),
}
THREADS = {"num_threads": Option(int, low=1, high=64)}
LEVELS = ("light", "medium", "heavy")

SCHEMAS: dict[str, dict[str, Option]] = {
    "LabeledFewShot": {"k": Option(int, low=1, high=256)},
    "BootstrapFewShot": {
        **DEMOS,
        "max_rounds": Option(int, low=1, high=10),
        "max_errors": Option(int, low=0),
        "metric_threshold": Option(float),
    },
    "BootstrapFewShotWithRandomSearch": {
        **DEMOS,
        **THREADS,
        "max_rounds": Option(int, low=1, high=10),
        "num_candidate_programs": Option(int, low=1, high=100),
        "max_errors": Option(int, low=0),
        "stop_at_score": Option(float),
        "metric_threshold": Option(float),
    },
    "MIPROv2": {
        **DEMOS,
        **THREADS,
        "auto": Option((*LEVELS, "none")),
        "num_candidates": Option(int, low=1, high=100),
        "seed": Option(int, low=0),
        "init_temperature": Option(float, low=0, high=2),
        "prompt_model": Option(str),
        "num_trials": Option(int, to=COMPILE, low=1, high=1000),
        "minibatch": Option(bool, to=COMPILE),
        "minibatch_size": Option(int, to=COMPILE, low=1),
        "minibatch_full_eval_steps": Option(int, to=COMPILE, low=1),
        "program_aware_proposer": Option(bool, to=COMPILE),
        "data_aware_proposer": Option(bool, to=COMPILE),
        "tip_aware_proposer": Option(bool, to=COMPILE),
        "fewshot_aware_proposer": Option(bool, to=COMPILE),
    },
    "COPRO": {
        **THREADS,
        "breadth": Option(int, low=2, high=50),
        "depth": Option(int, low=1, high=20),
        "init_temperature": Option(float, low=0, high=2),
        "prompt_model": Option(str),
    },
    "GEPA": {
        **THREADS,
        "auto": Option(LEVELS),
        "max_full_evals": Option(int, low=1),
        "max_metric_calls": Option(int, low=1),
        "reflection_lm": Option(str),
        "reflection_minibatch_size": Option(int, low=1, high=100),
        "candidate_selection_strategy": Option(("pareto", "current_best")),
        "use_merge": Option(bool),
        "seed": Option(int, low=0),
    },
    "SIMBA": {
        **THREADS,
        "bsize": Option(int, low=1, high=1000),
        "num_candidates": Option(int, low=1, high=50),
        "max_steps": Option(int, low=1, high=100),
        "max_demos": Option(int, low=0, high=64),
        "prompt_model": Option(str),
        "seed": Option(int, to=COMPILE, low=0),
    },
    "VariableSearch": {
        "mode": Option(("grid", "random")),
        "variables": Option(dict),
        "steps": Option(int, low=2, high=20),
        "samples": Option(int, low=1, high=1000),
        "max_combinations": Option(int, low=1, high=1000),
        "seed": Option(int, low=0),
        **THREADS,
    },
}
OPTIMIZERS = sorted(SCHEMAS)
DEFAULTS: dict[str, dict[str, Any]] = {
    "MIPROv2": {"auto": "light"},
    "SIMBA": {"bsize": 32},
}


def config_errors(optimizer: str, config: Any, train_size: int | None = None) -> list[dict[str, str]]:
    """Every problem with an optimizer's config, as `{"path": "config.<key>", "message"}`."""
    if optimizer not in SCHEMAS:
        return [{"path": "optimizer", "message": f"unknown optimizer {optimizer!r}; one of {OPTIMIZERS}"}]
    if not isinstance(config, dict):
        return [{"path": "config", "message": "must be an object"}]
    schema, errors = SCHEMAS[optimizer], []
    for key, value in config.items():
        option = schema.get(key)
        problem = (
            f"unknown option for {optimizer}; allowed: {sorted(schema)}"
            if option is None
            else option.problem(value)
        )
        if problem:
            errors.append({"path": f"config.{key}", "message": problem})
    if errors:
        return errors
    return _cross_checks(optimizer, {**DEFAULTS.get(optimizer, {}), **config}, train_size)


def _cross_checks(optimizer: str, config: dict, train_size: int | None) -> list[dict[str, str]]:
    errors = []
    if optimizer == "GEPA":
        budgets = [k for k in ("auto", "max_full_evals", "max_metric_calls") if k in config]
        if len(budgets) != 1:
            errors.append(
                {
                    "path": "config",
                    "message": "GEPA needs exactly one budget: auto, max_full_evals or max_metric_calls",
                }
            )
    if optimizer == "MIPROv2" and config.get("auto") == "none":
        for key in ("num_candidates", "num_trials"):
            if key not in config:
                errors.append({"path": f"config.{key}", "message": "required when auto is 'none'"})
    if optimizer == "SIMBA" and train_size is not None and config["bsize"] > train_size:
        errors.append(
            {"path": "config.bsize", "message": f"must be at most the training set size ({train_size})"}
        )
    return errors


def _lm(model: str | None) -> dspy.LM | None:
    return gateway.lm_for({"model": model}) if model else None


@dataclass
class Compiler:
    """A configured DSPy optimizer and the call that compiles a student with it."""

    optimizer: Any
    compile: Callable[[dspy.Module, list, list], dspy.Module]


def build(name: str, config: dict, metric: Callable, num_threads: int = 1) -> Compiler:
    """The DSPy optimizer for a validated config. `metric` is DSPy's (example, pred, trace) metric."""
    config = {**DEFAULTS.get(name, {}), **config}
    schema = SCHEMAS[name]
    init = {k: v for k, v in config.items() if schema[k].to == INIT}
    extra = {k: v for k, v in config.items() if schema[k].to == COMPILE}
    if name == "LabeledFewShot":
        opt = dspy.LabeledFewShot(**init)
        return Compiler(opt, lambda student, train, dev: opt.compile(student, trainset=train))
    if name == "BootstrapFewShot":
        opt = dspy.BootstrapFewShot(metric=metric, **init)
        return Compiler(opt, lambda student, train, dev: opt.compile(student, trainset=train))
    if name == "BootstrapFewShotWithRandomSearch":
        init.setdefault("num_threads", num_threads)
        opt = dspy.BootstrapFewShotWithRandomSearch(metric=metric, **init)
        return Compiler(opt, lambda student, train, dev: opt.compile(student, trainset=train))
    if name == "MIPROv2":
        init.setdefault("num_threads", num_threads)
        if init.get("auto") == "none":
            init["auto"] = None
        init["prompt_model"] = _lm(init.get("prompt_model"))
        opt = dspy.MIPROv2(metric=metric, **init)
        return Compiler(
            opt,
            lambda student, train, dev: opt.compile(
                student, trainset=train, requires_permission_to_run=False, **extra
            ),
        )
    if name == "COPRO":
        threads = init.pop("num_threads", num_threads)
        init["prompt_model"] = _lm(init.get("prompt_model"))
        opt = dspy.COPRO(metric=metric, **init)
        eval_kwargs = {"num_threads": threads, "display_progress": False}
        return Compiler(
            opt, lambda student, train, dev: opt.compile(student, trainset=train, eval_kwargs=eval_kwargs)
        )
    if name == "GEPA":
        init.setdefault("num_threads", num_threads)
        init["reflection_lm"] = _lm(init.get("reflection_lm")) or gateway.lm_for(None)
        opt = dspy.GEPA(metric=_gepa_metric(metric), **init)
        return Compiler(opt, lambda student, train, dev: opt.compile(student, trainset=train, valset=dev))
    if name == "SIMBA":
        init.setdefault("num_threads", num_threads)
        init["prompt_model"] = _lm(init.get("prompt_model"))
        opt = dspy.SIMBA(metric=_simba_metric(metric), **init)
        return Compiler(opt, lambda student, train, dev: opt.compile(student, trainset=train, **extra))
    raise ValueError(f"{name} is not a DSPy optimizer")


def _gepa_metric(metric: Callable) -> Callable:
    """GEPA calls metric(gold, pred, trace, pred_name, pred_trace)."""

    def gepa_metric(
        gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None
    ) -> float:
        return float(metric(gold, pred, trace))

    return gepa_metric


def _simba_metric(metric: Callable) -> Callable:
    """SIMBA calls metric(example, prediction_dict)."""

    def simba_metric(example: Any, prediction: Any) -> float:
        pred = dspy.Prediction(**prediction) if isinstance(prediction, dict) else prediction
        return float(metric(example, pred))

    return simba_metric


# What one "trial" in a run's progress counts, per optimizer.
TRIAL_UNITS = {
    "LabeledFewShot": "compile",
    "BootstrapFewShot": "metric_calls",
    "BootstrapFewShotWithRandomSearch": "evaluations",
    "MIPROv2": "evaluations",
    "COPRO": "evaluations",
    "GEPA": "metric_calls",
    "SIMBA": "metric_calls",
    "VariableSearch": "combinations",
}


def trials_total(name: str, config: dict, train_size: int) -> int | None:
    """An estimate of the progress units the optimizer will go through (see progress.Progress)."""
    config = {**DEFAULTS.get(name, {}), **config}
    if name == "BootstrapFewShot":
        return train_size * config.get("max_rounds", 1)
    if name == "BootstrapFewShotWithRandomSearch":
        return config.get("num_candidate_programs", 16) + 3
    if name == "MIPROv2":
        auto = config.get("auto")
        by_auto = {"light": 10, "medium": 20, "heavy": 30}
        return config.get("num_trials") or (by_auto.get(auto) if isinstance(auto, str) else None)
    if name == "COPRO":
        return config.get("breadth", 10) * config.get("depth", 3)
    if name == "GEPA":
        return config.get("max_metric_calls")
    if name == "SIMBA":
        return config.get("max_steps", 8) * min(config["bsize"], train_size) * config.get("num_candidates", 6)
    if name == "LabeledFewShot":
        return 1
    return None
