"""Optimizer metrics: score a prediction against a labelled example (DSPy's metric signature).

The label-free step rewards of BestOfN/Refine are `programs.rewards`.
"""

import json
import re
from collections.abc import Callable
from typing import Any

import dspy
from django.conf import settings
from django.utils.module_loading import import_string
from dspy.evaluate.metrics import f1_score, normalize_text

# A metric is `(example, pred, trace=None) -> float` in [0, 1], DSPy's metric signature. It
# scores each label field the example carries (its non-input keys) and averages them. A run
# names one by `"exact_match"` or `{"name": "numeric_tolerance", "tolerance": 0.01}`; `fields`
# restricts which label fields count. Custom metrics are dotted paths allowlisted in the
# DSPEX_CUSTOM_METRICS setting (settings are trusted code; a request only names them).

Metric = Callable[..., float]


class MetricError(ValueError):
    """A metric name or options that cannot be used; `path` points into the request."""

    def __init__(self, path: str, message: str, code: str = "invalid_metric") -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.message, self.code = path, message, code


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)


def _exact(gold: Any, pred: Any, _: dict) -> float:
    return float(_text(gold).strip() == _text(pred).strip())


def _normalized(gold: Any, pred: Any, _: dict) -> float:
    return float(normalize_text(_text(gold)) == normalize_text(_text(pred)))


def _token_f1(gold: Any, pred: Any, _: dict) -> float:
    return float(f1_score(_text(pred), _text(gold)))


def _contains(gold: Any, pred: Any, _: dict) -> float:
    needle = normalize_text(_text(gold))
    return float(bool(needle) and needle in normalize_text(_text(pred)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    match = re.search(r"-?\d+(?:\.\d+)?", _text(value).replace(",", ""))
    return float(match.group()) if match else None


def _numeric(gold: Any, pred: Any, options: dict) -> float:
    expected, got = _number(gold), _number(pred)
    if expected is None or got is None:
        return 0.0
    allowed = max(options.get("tolerance", 0.0), options.get("relative", 0.0) * abs(expected))
    return float(abs(expected - got) <= allowed + 1e-12)


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value.strip()
    return value


def _json_match(gold: Any, pred: Any, _: dict) -> float:
    """Objects score the share of expected keys whose values are equal; anything else is equal or not."""
    expected, got = _as_json(gold), _as_json(pred)
    if isinstance(expected, dict):
        if not isinstance(got, dict) or not expected:
            return float(expected == got)
        return sum(got.get(key) == value for key, value in expected.items()) / len(expected)
    return float(expected == got)


FieldScore = Callable[[Any, Any, dict], float]
BUILTIN: dict[str, tuple[FieldScore, dict[str, type]]] = {
    "exact_match": (_exact, {}),
    "normalized_exact_match": (_normalized, {}),
    "token_f1": (_token_f1, {}),
    "contains": (_contains, {}),
    "numeric_tolerance": (_numeric, {"tolerance": float, "relative": float}),
    "json_match": (_json_match, {}),
    "lm_judge": (None, {"model": str, "threshold": float}),  # type: ignore[dict-item]
}


def _label_fields(example: Any, fields: list[str] | None) -> list[str]:
    labels = list(example.labels().keys()) if hasattr(example, "labels") else []
    return [f for f in labels if f in fields] if fields else labels


class FieldMetric:
    """A registered per-field score averaged over the example's label fields."""

    def __init__(self, name: str, score: FieldScore, options: dict, fields: list[str] | None) -> None:
        self.__name__ = name
        self.name, self.score, self.options, self.fields = name, score, options, fields

    def __call__(self, example: Any, pred: Any, trace: Any = None, *args: Any, **kwargs: Any) -> float:
        fields = _label_fields(example, self.fields)
        if not fields or pred is None:
            return 0.0
        scores = [self.score(example[f], getattr(pred, f, None), self.options) for f in fields]
        return sum(scores) / len(scores)


class LMJudge:
    """DSPy's SemanticF1 judgement (recall/precision of the expected answer), through the gateway.

    SemanticF1 itself reads fixed fields (`question`, `response`); this asks the same signature
    about every label field, with the example's inputs as the question.
    """

    def __init__(self, options: dict, fields: list[str] | None) -> None:
        from dspy.evaluate.auto_evaluation import SemanticRecallPrecision

        self.__name__ = "lm_judge"
        self.options, self.fields = options, fields
        self.judge = dspy.ChainOfThought(SemanticRecallPrecision)

    def __call__(self, example: Any, pred: Any, trace: Any = None, *args: Any, **kwargs: Any) -> float:
        from dspy.evaluate.auto_evaluation import f1_score as semantic_f1

        from llm import gateway

        fields = _label_fields(example, self.fields)
        if not fields or pred is None:
            return 0.0
        question = "\n".join(f"{k}: {_text(v)}" for k, v in example.inputs().items())
        lm = gateway.lm_for({"model": self.options["model"]} if self.options.get("model") else None)
        scores = []
        with dspy.context(lm=lm):
            for name in fields:
                verdict = self.judge(
                    question=question,
                    ground_truth=_text(example[name]),
                    system_response=_text(getattr(pred, name, "")),
                )
                scores.append(semantic_f1(float(verdict.precision or 0), float(verdict.recall or 0)))
        score = sum(scores) / len(scores)
        return score if trace is None else float(score >= self.options.get("threshold", 0.66))


def _check_options(name: str, given: dict, allowed: dict[str, type]) -> dict:
    options = {}
    for key, value in given.items():
        if key not in allowed:
            raise MetricError(
                f"metric.{key}", f"unknown option for {name}; allowed: {sorted(allowed) or 'none'}"
            )
        kind = allowed[key]
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise MetricError(f"metric.{key}", f"must be {kind.__name__}")
        if kind is float and value < 0:
            raise MetricError(f"metric.{key}", "must not be negative")
        options[key] = value
    return options


def _custom(name: str) -> Metric:
    allowed = getattr(settings, "DSPEX_CUSTOM_METRICS", [])
    if name not in allowed:
        raise MetricError(
            "metric",
            f"unknown metric {name!r}; built in: {sorted(BUILTIN)}; "
            f"custom (DSPEX_CUSTOM_METRICS): {sorted(allowed)}",
            code="unknown_metric",
        )
    return import_string(name)


def build_metric(spec: Any) -> Metric:
    """The metric a run names (`"exact_match"` or `{"name": ..., "fields": [...], options}`).

    Raises MetricError (code `unknown_metric` for a name that is neither built in nor allowlisted).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise MetricError("metric", 'must be a metric name or {"name": ..., options}')
    rest = {k: v for k, v in spec.items() if k not in ("name", "fields")}
    fields = spec.get("fields")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise MetricError("metric.fields", "must be a list of output field names")
    name = spec["name"]
    if name not in BUILTIN:
        if rest:
            raise MetricError("metric", "custom metrics take no options")
        return _custom(name)
    score, allowed = BUILTIN[name]
    options = _check_options(name, rest, allowed)
    if name == "lm_judge":
        return LMJudge(options, fields)
    return FieldMetric(name, score, options, fields)


def metric_name(spec: Any) -> str:
    return spec if isinstance(spec, str) else str((spec or {}).get("name"))
