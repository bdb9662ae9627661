"""Label-free rewards that BestOfN and Refine steps name."""

import dspy

from programs.rewards import REWARDS, concise, nonempty


def test_the_shipped_rewards_are_registered() -> None:
    assert {"nonempty", "concise"} <= set(REWARDS)


def test_nonempty_requires_every_output_to_have_a_value() -> None:
    assert nonempty({}, dspy.Prediction(answer="Paris", reasoning="")) == 1.0
    assert nonempty({}, dspy.Prediction(answer="  ", label="x")) == 0.0
    assert nonempty({}, dspy.Prediction(tags=[])) == 0.0
    assert nonempty({}, dspy.Prediction(count=0)) == 1.0
    assert nonempty({}, None) == 0.0


def test_concise_prefers_short_answers() -> None:
    assert concise({}, dspy.Prediction(answer="Paris.", reasoning=" ".join(["why"] * 500))) == 1.0
    assert concise({}, dspy.Prediction(answer=" ".join(["word"] * 60))) == 0.5
    assert concise({}, dspy.Prediction(answer="")) == 0.0
