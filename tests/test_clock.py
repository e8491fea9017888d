"""Decisions on a clock: durations, the defaults for a panel's bars, and which bars are decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.clock import Clock, decision_mask, describe_duration, parse_duration, training_times

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
START = datetime(2024, 3, 1, tzinfo=UTC)


def timeline(n: int, step: timedelta, skip: tuple[int, ...] = ()) -> np.ndarray:
    return np.array([int((START + i * step).timestamp()) * 10**9 for i in range(n) if i not in skip], dtype=np.int64)


@pytest.mark.parametrize(
    ("text", "duration"), [("1d", DAY), ("4h", 4 * HOUR), ("30m", timedelta(minutes=30)), (" 2W ", timedelta(weeks=2))]
)
def test_durations_read_as_written(text, duration):
    assert parse_duration(text) == duration


@pytest.mark.parametrize("text", ["", "1", "d", "0d", "1.5h", "1y", "-4h"])
def test_a_duration_that_is_not_one_says_how_to_write_one(text):
    with pytest.raises(ValueError, match=r"e\.g\. 1d, 4h"):
        parse_duration(text)
    with pytest.raises(ValueError):
        EvalConfig(horizon=text)


def test_intraday_bars_decide_daily_with_a_days_label_and_daily_bars_every_bar():
    four_hours = Clock.of(EvalConfig(), 4 * HOUR)
    assert (four_hours.every, four_hours.every_bars, four_hours.horizon) == (DAY, None, DAY)
    assert four_hours.lookback == 43 * DAY  # 256 bars of 4 hours, in whole days
    assert Clock.of(EvalConfig(), HOUR).lookback == 30 * DAY  # 256 hours is less than 30 days
    daily = Clock.of(EvalConfig(), DAY)
    assert (daily.every, daily.every_bars, daily.horizon, daily.lookback) == (None, 1, DAY, 256 * DAY)
    hourly_decisions = Clock.of(EvalConfig(decide_every="1h"), HOUR)  # one setting away
    assert (hourly_decisions.every, hourly_decisions.every_bars, hourly_decisions.horizon) == (None, 1, HOUR)
    assert "daily decisions" in four_hours.describe() and "label over 1 day" in four_hours.describe()


def test_bars_and_durations_mix_and_a_cadence_must_be_whole_bars():
    clock = Clock.of(EvalConfig(decide_every=6, horizon="12h", embargo=2, lookback="10d"), 4 * HOUR)
    assert (clock.every_bars, clock.horizon, clock.embargo, clock.lookback) == (6, 12 * HOUR, 8 * HOUR, 10 * DAY)
    assert Clock.of(EvalConfig(decide_every=6), 4 * HOUR).horizon == DAY  # the holding period
    with pytest.raises(ValueError, match="whole number"):
        Clock.of(EvalConfig(decide_every="3h"), 2 * HOUR)


def test_a_daily_clock_decides_at_the_bar_that_closes_the_utc_day():
    times = timeline(6 * 5, 4 * HOUR)
    mask = decision_mask(times, 0, Clock.of(EvalConfig(), 4 * HOUR))
    hours = [datetime.fromtimestamp(t / 1e9, UTC).hour for t in times[mask]]
    assert hours == [20] * 5  # the 20:00 bar closes at midnight


def test_a_missing_closing_bar_moves_the_decision_to_the_last_bar_of_its_day():
    times = timeline(6 * 3, 4 * HOUR, skip=(11,))  # day 2's 20:00 bar is missing
    mask = decision_mask(times, 0, Clock.of(EvalConfig(), 4 * HOUR))
    hours = [datetime.fromtimestamp(t / 1e9, UTC).hour for t in times[mask]]
    assert hours == [20, 16, 20]


def test_a_cadence_in_bars_counts_from_the_first_scored_bar():
    times = timeline(20, DAY)
    mask = decision_mask(times, 3, Clock.of(EvalConfig(decide_every=5), DAY))
    assert np.flatnonzero(mask).tolist() == [3, 8, 13, 18]
    assert not decision_mask(times, 3, Clock.of(EvalConfig(), 4 * HOUR))[:3].any()  # nothing before the first


def test_models_are_fitted_on_the_bars_that_close_the_day_up_to_the_training_end_unless_told_every_bar():
    times = timeline(6 * 5, 4 * HOUR)
    fitted = training_times(times, int(times[20]), Clock.of(EvalConfig(), 4 * HOUR))
    assert [datetime.fromtimestamp(t / 1e9, UTC).hour for t in fitted] == [20] * 3  # days 1-3; day 4 ends after
    assert training_times(times, int(times[20]), Clock.of(EvalConfig(fit_on="bars"), 4 * HOUR)) is None


@pytest.mark.parametrize(("duration", "words"), [(DAY, "1 day"), (4 * HOUR, "4 hours"), (43 * DAY, "43 days")])
def test_durations_in_words(duration, words):
    assert describe_duration(duration) == words
