"""The evaluation timeline: folds never leak training labels into test bars; the holdout stays out."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.splits import ProtocolError, plan_evaluation, reward_panel, timeline

START = datetime(2024, 1, 1, tzinfo=UTC)


def hourly(n: int) -> list[datetime]:
    return [START + timedelta(hours=i) for i in range(n)]


@pytest.mark.parametrize("horizon", [1, 3, 12])
@pytest.mark.parametrize("embargo", [0, 5])
def test_no_training_label_reaches_a_test_bar(horizon, embargo):
    bars = hourly(1000)
    plan = plan_evaluation(bars, EvalConfig(horizon=horizon, embargo=embargo, n_folds=5))
    for fold in [*plan.folds, plan.holdout_fold]:
        last_train = bars.index(fold.train_end)
        first_test = bars.index(fold.test_start)
        # the label of the last training bar is the return up to bar last_train + horizon
        assert last_train + horizon < first_test
        assert first_test - last_train - 1 == horizon + embargo


def test_folds_are_expanding_contiguous_and_cover_the_test_span():
    bars = hourly(1000)
    plan = plan_evaluation(bars, EvalConfig(n_folds=4, min_train_fraction=0.5, holdout_fraction=0.2))
    assert all(f.train_start == bars[0] for f in plan.folds)
    assert [f.train_end for f in plan.folds] == sorted(f.train_end for f in plan.folds)
    for before, after in zip(plan.folds, plan.folds[1:], strict=False):
        assert bars.index(after.test_start) == bars.index(before.test_end) + 1
    assert plan.folds[0].test_start == bars[400]  # half of the 800-bar reward window
    assert plan.folds[-1].test_end == plan.reward_end == bars[799]


def test_holdout_is_the_last_fifth_and_no_fold_touches_it():
    bars = hourly(1000)
    plan = plan_evaluation(bars, EvalConfig())
    assert plan.holdout_start == bars[800] and plan.holdout_end == bars[-1]
    for fold in plan.folds:
        assert fold.test_end < plan.holdout_start and fold.train_end < plan.holdout_start
    assert plan.holdout_fold.test_start == plan.holdout_start
    assert plan.holdout_fold.test_end == plan.holdout_end


def test_no_holdout_when_fraction_is_zero():
    plan = plan_evaluation(hourly(200), EvalConfig(holdout_fraction=0))
    assert plan.holdout_fold is None and plan.reward_end == hourly(200)[-1]


def test_too_short_a_panel_says_what_to_change():
    with pytest.raises(ProtocolError, match="fewer folds or a longer panel"):
        plan_evaluation(hourly(10), EvalConfig())
    with pytest.raises(ProtocolError, match="lower the horizon"):
        plan_evaluation(hourly(100), EvalConfig(horizon=40, holdout_fraction=0))


def test_wire_form_is_nanoseconds():
    plan = plan_evaluation(hourly(1000), EvalConfig())
    wire = plan.folds[0].to_wire()
    assert wire["train_start"] == int(START.timestamp()) * 10**9
    assert wire["index"] == 0


def test_reward_panel_stops_at_the_reward_end():
    bars = hourly(100)
    panel = pl.DataFrame({"timestamp": bars * 2, "symbol": ["A"] * 100 + ["B"] * 100, "close": [1.0] * 200})
    plan = plan_evaluation(timeline(panel), EvalConfig(n_folds=2, decide_every=1))
    cut = reward_panel(panel, plan)
    assert cut.get_column("timestamp").max() == plan.reward_end
    assert cut.filter(pl.col("timestamp") >= plan.holdout_start).is_empty()
    assert cut.height == 2 * 80


# ---- the holdout after the policy's knowledge cutoff ----


def test_the_holdout_starts_after_the_knowledge_cutoff_where_the_data_allows():
    bars = hourly(1000)
    cutoff = bars[599] + timedelta(minutes=30)  # the policy may know up to bar 599
    plan = plan_evaluation(bars, EvalConfig(), holdout_after=cutoff)
    assert plan.holdout_start == bars[600] and plan.reward_end == bars[599]
    assert all(fold.test_end <= cutoff for fold in plan.folds)


def test_the_default_holdout_stays_when_it_already_lies_after_the_cutoff_or_the_data_does_not_allow():
    bars = hourly(1000)
    default = plan_evaluation(bars, EvalConfig())
    assert plan_evaluation(bars, EvalConfig(), holdout_after=bars[900]) == default  # already after it
    assert plan_evaluation(bars, EvalConfig(), holdout_after=bars[-1]) == default  # nothing after it
    assert plan_evaluation(bars, EvalConfig(), holdout_after=bars[5]) == default  # no room for the folds before it
    no_holdout = EvalConfig(holdout_fraction=0)
    assert plan_evaluation(bars, no_holdout, holdout_after=bars[500]).holdout_start is None  # none was asked for
