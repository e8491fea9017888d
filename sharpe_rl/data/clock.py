"""Decisions on a clock: when an experiment is asked, what its label looks ahead to, and how much history it gets.

A trader decides at set times (once a day, every four hours), not on every bar; and the bar size of
a user's data should not decide the cadence. So the evaluation's times are durations
(`EvalConfig`): `decide_every` ("1d", "4h", or a number of bars), `horizon` (the label: the sign of
the close that long after the decision, against the close at it), `embargo` and `lookback`. A
`Clock` resolves them for a panel's bar interval:

- decisions: by default once a day ("1d") for bars shorter than a day, every bar otherwise. A
  duration decides at the last bar of each period of that length (UTC-aligned: for 4-hour bars and
  "1d", the bar that closes at midnight); a number of bars decides every that many bars from the
  first bar scored.
- horizon: by default the decision cadence (a label over the holding period).
- lookback: by default 256 bars or 30 days, whichever is longer (enough for the usual windows: a
  200-day average on daily bars, a week of hourly bars many times over).

`decision_mask` is the one place that says which bars are decisions: the host sends those times
to the sandbox with each task, and scoring holds positions from one to the next, so the two can
never drift apart. By default (`EvalConfig.fit_on`) a model is also fitted on the bars at decision
times only (`training_times`): labelled as they are traded, without the overlapping labels of every
4-hour bar of a day, and with an intraday panel's fit several times faster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from sharpe_rl.config import EvalConfig

DAY = timedelta(days=1)
#: Bars of history make_features gets at the least, by default ...
DEFAULT_LOOKBACK_BARS = 256
#: ... and the least time.
DEFAULT_LOOKBACK = timedelta(days=30)
_UNITS = {"w": timedelta(weeks=1), "d": DAY, "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_DURATION = re.compile(r"^\s*(\d+)\s*([wdhm])\s*$")


def parse_duration(text: str) -> timedelta:
    """ "1d", "4h", "30m", "2w" as a timedelta; a ValueError that says the form otherwise."""
    found = _DURATION.match(text.lower())
    if not found or int(found.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration: write a positive whole number and a unit, e.g. 1d, 4h, 30m, 2w")
    return int(found.group(1)) * _UNITS[found.group(2)]


def describe_duration(duration: timedelta) -> str:
    """A duration in words: 1 day, 4 hours, 2 weeks."""
    seconds = int(duration.total_seconds())
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


@dataclass(frozen=True)
class Clock:
    """An EvalConfig's times resolved for a panel's bar interval."""

    interval: timedelta
    horizon: timedelta
    embargo: timedelta
    lookback: timedelta
    every: timedelta | None  # decisions at the last bar of each period this long ...
    every_bars: int | None  # ... or every this many bars from the first bar scored
    fit_at_decisions: bool = True  # models are fitted on the bars at decision times (else on every bar)

    @classmethod
    def of(cls, cfg: EvalConfig, interval: timedelta) -> Clock:
        """`cfg`'s clock on bars of `interval` (see the module docstring for the defaults)."""
        every, every_bars = _cadence(cfg.decide_every, interval)
        holding = every if every is not None else (every_bars or 1) * interval
        return cls(
            interval=interval,
            horizon=_duration(cfg.horizon, interval) if cfg.horizon is not None else holding,
            embargo=_duration(cfg.embargo, interval),
            lookback=_duration(cfg.lookback, interval) if cfg.lookback is not None else _default_lookback(interval),
            every=every,
            every_bars=every_bars,
            fit_at_decisions=cfg.fit_on == "decisions",
        )

    def describe(self) -> str:
        """The cadence, label and history in the words a run, a report and a prompt use."""
        if self.every is not None:
            cadence = "daily decisions" if self.every == DAY else f"a decision every {describe_duration(self.every)}"
            cadence += " (at the close of the bar that ends each period, UTC)"
        elif self.every_bars == 1:
            cadence = f"a decision every bar ({describe_duration(self.interval)})"
        else:
            cadence = f"a decision every {self.every_bars} bars ({describe_duration(self.every_bars * self.interval)})"
        return (
            f"{cadence}; label over {describe_duration(self.horizon)}; "
            f"{describe_duration(self.lookback)} of history per decision; "
            f"models fitted on {'the bars at decisions' if self.fit_at_decisions else 'every bar'}"
        )


def decision_mask(timeline_ns: np.ndarray, first: int, clock: Clock) -> np.ndarray:
    """Which bars of a sorted union timeline (int64 ns) are decisions, from bar `first` on (none before it)."""
    mask = np.zeros(len(timeline_ns), dtype=bool)
    if first >= len(timeline_ns):
        return mask
    if clock.every is None:
        mask[first :: clock.every_bars or 1] = True
        return mask
    every = _ns(clock.every)
    closes = timeline_ns[first:] + _ns(clock.interval)
    period = (closes - 1) // every  # a bar closing exactly at a period's end belongs to that period
    last_of_period = np.append(period[1:] != period[:-1], True)
    mask[first:] = last_of_period
    return mask


def _cadence(value: int | str | None, interval: timedelta) -> tuple[timedelta | None, int | None]:
    if value is None:
        return (DAY, None) if interval < DAY else (None, 1)
    if isinstance(value, int):
        return None, value
    every = parse_duration(value)
    if every <= interval:
        return None, 1
    if every % interval:
        raise ValueError(f"decide_every {value} is not a whole number of {describe_duration(interval)} bars")
    return every, None


def _default_lookback(interval: timedelta) -> timedelta:
    """`DEFAULT_LOOKBACK_BARS` bars or `DEFAULT_LOOKBACK`, whichever is longer, in whole days for intraday bars."""
    bars = DEFAULT_LOOKBACK_BARS * interval
    if interval < DAY:
        bars = -(-bars // DAY) * DAY
    return max(bars, DEFAULT_LOOKBACK)


def _duration(value: int | str, interval: timedelta) -> timedelta:
    return value * interval if isinstance(value, int) else parse_duration(value)


def _ns(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1) * 1000


def training_times(timeline_ns: np.ndarray, until_ns: int, clock: Clock) -> np.ndarray | None:
    """The bars (int64 ns, up to `until_ns`) a model is fitted on: those the decision rule names from the first bar
    of the timeline on, so a model learns from rows like the ones it is asked about; None: every bar."""
    if not clock.fit_at_decisions:
        return None
    fitted = timeline_ns[decision_mask(timeline_ns, 0, clock)]  # on the whole timeline: a period cut short is none
    return fitted[fitted <= until_ns]


def decision_times(timeline_ns: np.ndarray, folds: list[dict[str, int]], clock: Clock) -> np.ndarray:
    """The decisions (int64 ns) inside the folds' test windows (`Fold.to_wire` bounds), from their first test bar on."""
    first = int(np.searchsorted(timeline_ns, folds[0]["test_start"]))
    asked = timeline_ns[decision_mask(timeline_ns, first, clock)]
    in_tests = np.zeros(len(asked), dtype=bool)
    for fold in folds:
        in_tests |= (asked >= fold["test_start"]) & (asked <= fold["test_end"])
    return asked[in_tests]
