"""The evaluation protocol's timeline: reward window, final holdout and walk-forward folds.

All boundaries are bar timestamps of the panel's union timeline and are inclusive. A training
set's last bar closes `horizon + embargo` before its test set's first bar opens, so no training
label (the return from bar t's close to the close `horizon` later, `sharpe_rl.data.clock`) reaches
into a test bar. The final holdout is carved off the end
of time; the sandbox never sees it during a reward run, and `reward_end` is the last bar it may
see.
"""

from __future__ import annotations

import bisect
import contextlib
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.clock import Clock

#: Fewest training bars a fold may have; fewer means the panel is too short for the protocol.
MIN_TRAIN_BARS = 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Fold(BaseModel):
    """One walk-forward fold; all four bounds are inclusive bar timestamps."""

    model_config = ConfigDict(frozen=True)

    index: int
    train_start: datetime
    train_end: datetime
    test_start: datetime
    test_end: datetime

    def to_wire(self) -> dict[str, int]:
        """The fold as nanosecond epoch integers, the form the sandbox harness reads."""
        return {
            "index": self.index,
            **{name: _to_ns(getattr(self, name)) for name in ("train_start", "train_end", "test_start", "test_end")},
        }


class EvalPlan(BaseModel):
    """Where the reward window ends, where the holdout starts, and the folds inside the window."""

    model_config = ConfigDict(frozen=True)

    reward_start: datetime
    reward_end: datetime
    holdout_start: datetime | None
    holdout_end: datetime | None
    folds: list[Fold]
    holdout_fold: Fold | None


class ProtocolError(ValueError):
    """The panel is too short for the evaluation protocol asked for."""


def timeline(panel: pl.DataFrame) -> list[datetime]:
    """The sorted union of bar timestamps across all symbols."""
    return panel.get_column("timestamp").unique().sort().to_list()


def reward_panel(panel: pl.DataFrame, plan: EvalPlan) -> pl.DataFrame:
    """The panel cut at `plan.reward_end`: what a reward run may see and what its reward is scored on.

    Scoring this cut (not the full panel) is what keeps the last test bar's next-bar return, which
    would be the holdout's first close, out of every reward.
    """
    return panel.filter(pl.col("timestamp") <= plan.reward_end)


def fold_rows(panel: pl.DataFrame, folds: Sequence[Fold]) -> pl.DataFrame:
    """The rows a run over `folds` predicts, fold by fold: (timestamp, symbol, fold), in the panel's order."""
    parts = [
        panel.filter(pl.col("timestamp").is_between(fold.test_start, fold.test_end))
        .select("timestamp", "symbol")
        .with_columns(fold=pl.lit(fold.index, pl.Int32))
        for fold in folds
    ]
    return pl.concat(parts)


def plan_evaluation(timestamps: Sequence[datetime], cfg: EvalConfig, holdout_after: datetime | None = None) -> EvalPlan:
    """Split a sorted timeline into the reward window with its folds, and the holdout.

    The holdout is the last `holdout_fraction` of the bars; with `holdout_after` (the end of the
    policy's knowledge cutoff, `sharpe_rl.policy.knowledge`) it starts at the first bar after that
    instant instead, when that is earlier and the reward window before it still holds the folds
    (where the data allows). With no bar after it, or too few before it, the default holdout stays.
    """
    n = len(timestamps)
    n_holdout = math.floor(n * cfg.holdout_fraction)
    if holdout_after is not None and n_holdout:
        after_cutoff = n - bisect.bisect_right(timestamps, holdout_after)
        if after_cutoff > n_holdout:
            with contextlib.suppress(ProtocolError):
                return _plan(timestamps, cfg, after_cutoff)
    return _plan(timestamps, cfg, n_holdout)


def timeline_interval(timestamps: Sequence[datetime]) -> timedelta:
    """The bar interval of a sorted timeline: its most common step."""
    steps = np.diff(np.array([_to_ns(t) for t in timestamps], dtype=np.int64))
    values, counts = np.unique(steps[steps > 0], return_counts=True)
    if not len(values):
        raise ProtocolError("the timeline has fewer than two bars")
    return timedelta(microseconds=int(values[np.argmax(counts)]) // 1000)


def _plan(timestamps: Sequence[datetime], cfg: EvalConfig, n_holdout: int) -> EvalPlan:
    n = len(timestamps)
    reward = timestamps[: n - n_holdout]
    clock = Clock.of(cfg, timeline_interval(timestamps))
    # a training label looks `horizon` ahead from its bar's close: it must end before the test window opens
    gap = clock.horizon + clock.embargo + clock.interval

    first_test = math.ceil(len(reward) * cfg.min_train_fraction)
    test_positions = np.arange(first_test, len(reward))
    if len(test_positions) < cfg.n_folds * 2:
        raise ProtocolError(
            f"the reward window has {len(reward)} bars: too few for {cfg.n_folds} folds "
            f"after a first training set of {first_test} bars; use fewer folds or a longer panel"
        )
    chunks = np.array_split(test_positions, cfg.n_folds)
    folds = [_fold(i, reward, int(chunk[0]), int(chunk[-1]), gap) for i, chunk in enumerate(chunks)]

    holdout_fold = None
    if n_holdout:
        holdout_fold = _fold(len(folds), timestamps, len(reward), n - 1, gap)
    return EvalPlan(
        reward_start=reward[0],
        reward_end=reward[-1],
        holdout_start=timestamps[len(reward)] if n_holdout else None,
        holdout_end=timestamps[-1] if n_holdout else None,
        folds=folds,
        holdout_fold=holdout_fold,
    )


def _fold(index: int, bars: Sequence[datetime], test_start: int, test_end: int, gap: timedelta) -> Fold:
    """Fold with test bars [test_start, test_end] (positions in `bars`), training on all bars `gap` before it."""
    train_end = bisect.bisect_right(bars, bars[test_start] - gap) - 1
    if train_end + 1 < MIN_TRAIN_BARS:
        raise ProtocolError(
            f"fold {index} would train on {max(train_end + 1, 0)} bars (fewer than {MIN_TRAIN_BARS}); "
            "lower the horizon/embargo or use a longer panel"
        )
    return Fold(
        index=index,
        train_start=bars[0],
        train_end=bars[train_end],
        test_start=bars[test_start],
        test_end=bars[test_end],
    )


def _to_ns(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000
