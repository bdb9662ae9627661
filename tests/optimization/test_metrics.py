"""The metrics registry: built-in metrics, the LM judge, allowlisted custom metrics, errors."""

import dspy
import pytest

from optimization.metrics import MetricError, build_metric


def example(**labels):
    return dspy.Example(question="Who founded Acme?", **labels).with_inputs("question")


@pytest.mark.parametrize(
    ("metric", "gold", "predicted", "score"),
    [
        ("exact_match", "Maria Lopez", "Maria Lopez", 1.0),
        ("exact_match", "Maria Lopez", "maria lopez", 0.0),
        ("normalized_exact_match", "Maria Lopez", "maria lopez.", 1.0),
        ("token_f1", "Maria Lopez", "Lopez", 2 / 3),
        ("contains", "Maria Lopez", "It was Maria Lopez, in 2014.", 1.0),
        ("contains", "Maria Lopez", "Daniel Kim", 0.0),
        ({"name": "numeric_tolerance", "tolerance": 0.5}, "12", "about 12.4 dollars", 1.0),
        ({"name": "numeric_tolerance", "relative": 0.01}, "100", "102", 0.0),
        ("json_match", {"a": 1, "b": 2}, '{"a": 1, "b": 3}', 0.5),
        ("json_match", [1, 2], "[1, 2]", 1.0),
    ],
)
def test_builtin_metrics_score_label_fields(metric, gold, predicted, score):
    assert build_metric(metric)(example(answer=gold), dspy.Prediction(answer=predicted)) == pytest.approx(
        score
    )


def test_metrics_average_over_label_fields_or_the_named_ones():
    gold = example(answer="4", unit="apples")
    pred = dspy.Prediction(answer="4", unit="pears")
    assert build_metric("exact_match")(gold, pred) == 0.5
    assert build_metric({"name": "exact_match", "fields": ["answer"]})(gold, pred) == 1.0


def test_unknown_metrics_and_options_are_refused():
    with pytest.raises(MetricError) as unknown:
        build_metric("vibes")
    assert unknown.value.code == "unknown_metric"
    with pytest.raises(MetricError) as option:
        build_metric({"name": "numeric_tolerance", "tolerence": 1})
    assert option.value.path == "metric.tolerence"


def allowlisted_metric(example, pred, trace=None):
    return float(len(str(pred.answer)) < 10)


def test_custom_metrics_must_be_allowlisted(settings):
    path = f"{__name__}.allowlisted_metric"
    with pytest.raises(MetricError):
        build_metric(path)
    settings.DSPEX_CUSTOM_METRICS = [path]
    assert build_metric(path)(example(answer="x"), dspy.Prediction(answer="short")) == 1.0


def test_the_lm_judge_asks_the_gateway_lm_and_returns_a_score_in_range(db):
    from optimization.progress import RunMonitor

    monitor = RunMonitor(deadline=1e12, cost_budget=None, trials_total=None, unit="evaluations")
    judge = build_metric({"name": "lm_judge", "model": "sim/default"})
    with dspy.context(callbacks=[monitor]):
        score = judge(example(answer="Maria Lopez"), dspy.Prediction(answer="Maria Lopez founded it"))
    assert 0.0 <= score <= 1.0
    assert monitor.counts["lm_calls"] == 1  # one judgement, through the gateway (counted by callbacks)
