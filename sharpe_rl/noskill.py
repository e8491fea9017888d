"""The no-skill band: what experiments without any forecasting skill score on a panel, under its evaluation.

A net Sharpe ratio is a noisy estimate. On a short, few-symbol panel a ranking drawn at random can
score +3 by luck one time in six, and an RL loop that is paid for it learns to try another seed.
So the host computes, for a panel and its evaluation settings, what zero-skill experiments score
on the reward folds, through the same scoring as every experiment (`scoring.book`, costs, timing
only): random cross-sectional rankings re-drawn at several speeds (every decision, every
`SPEEDS[1]` and every `SPEEDS[2]` decisions, where a fold is long enough for that to be a
ranking that moves), `DRAWS` seeds each, and a static ranking held the whole window.

- The **band** is the central 95% of the random rankings' net Sharpe ratios: "no-skill band: a
  random ranking scores between A and B (95%)". A result inside it is indistinguishable from luck.
- `sigma`, the noise of a Sharpe ratio on this panel (the random rankings' standard deviation,
  pooled within speeds so that their different costs do not widen it), is the unit of the evidence
  reward (`scoring.shape_reward`): no skill scores at most 0 in expectation (costs only subtract),
  so a result's evidence is its net Sharpe over `sigma`.
- The static ranking shows what a fixed tilt earns under timing-only scoring: its entry cost.

The band depends on the panel and the evaluation settings only, and is cached on disk by the
dataset's hash and those settings (`cached_band`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.atomic import write_bytes_atomic
from sharpe_rl.scoring import Market, book, market, metrics_of

#: A random ranking is re-drawn every this many decisions (rebalances): fast, weekly-ish, monthly-ish.
SPEEDS = (1, 7, 30)
#: Random rankings drawn per speed.
DRAWS = 200
#: A speed is used only where a ranking is re-drawn at least this many times in every fold.
MIN_DRAWS_PER_FOLD = 6
#: Changes whenever what the band measures changes, so that a cached band is never stale.
BAND_VERSION = 4
#: The Sharpe noise above which a panel cannot tell a good strategy (a true net Sharpe of 1) from luck.
WIDE_SIGMA = 1.0


class NoSkillBand(BaseModel):
    """What zero-skill experiments score on one panel under one evaluation (net Sharpe, annualised)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lo: float  # 2.5% quantile of the random rankings
    hi: float  # 97.5% quantile
    sigma: float  # the noise of a net Sharpe here: the random rankings' sd, pooled within speeds
    mean_by_speed: dict[str, float]  # "every N decisions" -> mean net Sharpe (costs make faster ones lower)
    static: float  # a ranking held the whole window (timing only: its entry cost)
    n_bars: int  # scored bars of the reward folds
    n_symbols: int
    draws: int

    def sentence(self) -> str:
        """The band in the words every view of it uses."""
        return f"no-skill band: a random ranking scores between {self.lo:+.2f} and {self.hi:+.2f} (95%)"

    def evidence(self, sharpe: float) -> float:
        """A net Sharpe in units of this panel's no-skill noise: how far it stands above what luck gives."""
        return sharpe / self.sigma

    def warning(self, cap_sharpe: float | None) -> str | None:
        """Why rewards on this panel would pay luck, and what would narrow the band; None when they would not.

        `cap_sharpe` is the net Sharpe at which the configured reward reaches its cap (None: a reward in
        units of the band, which luck cannot reach by construction).
        """
        reasons = []
        if cap_sharpe is not None and self.hi >= cap_sharpe:
            reasons.append(f"the band reaches the reward's cap (a net Sharpe of {cap_sharpe:g})")
        if self.sigma > WIDE_SIGMA:
            reasons.append(
                f"a net Sharpe is uncertain by ±{self.sigma:.2f} here: a strategy with a true net Sharpe of 1 "
                "cannot be told from luck"
            )
        if not reasons:
            return None
        return (
            f"warning: {'; '.join(reasons)} ({self.n_bars:,} scored bars, {self.n_symbols} symbols). A longer window "
            "narrows the band (a Sharpe ratio's noise falls with the square root of the time scored); more symbols "
            "let real skill stand further above it (more independent bets per decision); a slower cadence "
            "(eval.decide_every) pays less in costs."
        )


def no_skill_band(
    panel: pl.DataFrame, rows: pl.DataFrame, cfg: EvalConfig, *, bar_interval: timedelta | None = None
) -> NoSkillBand:
    """The band of the prediction rows `(timestamp, symbol, fold)` (the reward folds' test rows) on `panel`."""
    scored = market(panel, rows, cfg, bar_interval=bar_interval)
    available = _available(scored, rows)
    rng = np.random.default_rng(0)  # a property of the panel and the settings, not of a run
    decision_number = np.maximum(np.cumsum(scored.decision) - 1, 0)  # the decision each bar is held from
    decisions = int(scored.decision.sum())
    by_speed: dict[str, list[float]] = {}
    for speed in speeds(scored):
        sharpes = by_speed.setdefault(f"every {speed} decision{'s' if speed > 1 else ''}", [])
        for _ in range(DRAWS):
            draws = rng.random((-(-decisions // speed), available.shape[1]))
            probability = draws[decision_number // speed]
            sharpes.append(_sharpe(scored, np.where(available, probability, np.nan), cfg))
    static = [_sharpe(scored, np.where(available, rng.random(available.shape[1]), np.nan), cfg) for _ in range(20)]
    pooled = np.concatenate([np.asarray(v) for v in by_speed.values()])
    within = np.sqrt(np.mean([np.var(v, ddof=1) for v in by_speed.values()]))
    return NoSkillBand(
        lo=float(np.quantile(pooled, 0.025)),
        hi=float(np.quantile(pooled, 0.975)),
        sigma=float(within),
        mean_by_speed={name: float(np.mean(v)) for name, v in by_speed.items()},
        static=float(np.mean(static)),
        n_bars=len(scored.timestamps),
        n_symbols=len(scored.symbols),
        draws=len(pooled),
    )


def cached_band(
    cache_dir: Path,
    data_sha256: str,
    panel: pl.DataFrame,
    rows: pl.DataFrame,
    cfg: EvalConfig,
    *,
    bar_interval: timedelta | None = None,
) -> NoSkillBand:
    """`no_skill_band`, kept under `cache_dir/noskill/` by the dataset's hash and the evaluation settings."""
    key = hashlib.sha256(
        json.dumps([BAND_VERSION, DRAWS, SPEEDS, MIN_DRAWS_PER_FOLD, data_sha256, cfg.model_dump(mode="json")]).encode()
    ).hexdigest()[:24]
    path = cache_dir / "noskill" / f"{key}.json"
    if path.is_file():
        return NoSkillBand.model_validate_json(path.read_text())
    band = no_skill_band(panel, rows, cfg, bar_interval=bar_interval)
    write_bytes_atomic(path, band.model_dump_json(indent=2).encode())
    return band


def speeds(scored: Market) -> list[int]:
    """`SPEEDS` that re-draw at least `MIN_DRAWS_PER_FOLD` times in the shortest fold (always every decision).

    A ranking held for most of a fold is nearly static there, and timing-only scoring leaves it its
    costs alone: a Sharpe ratio of a few cost spikes over nothing, not a measure of luck.
    """
    folds = np.unique(scored.fold, return_inverse=True)[1]
    shortest = int(np.bincount(folds, weights=scored.decision).min())
    return [speed for speed in SPEEDS if speed == 1 or speed * MIN_DRAWS_PER_FOLD <= shortest]


def _available(scored: Market, rows: pl.DataFrame) -> np.ndarray:
    """Where a prediction is asked: the (scored bar, symbol) cells that have a row."""
    located = (
        rows.select(pl.col("timestamp").cast(pl.Datetime("us", "UTC")), pl.col("symbol").cast(pl.String))
        .join(scored.bar_of, on="timestamp")
        .join(scored.column_of, on="symbol")
        .with_columns(pl.col("bar") - scored.first_bar)
        .filter(pl.col("bar") < len(scored.timestamps))
    )
    available = np.zeros(scored.next_return.shape, dtype=bool)
    available[located.get_column("bar").to_numpy(), located.get_column("column").to_numpy()] = True
    return available


def _sharpe(scored: Market, probability: np.ndarray, cfg: EvalConfig) -> float:
    metrics = metrics_of(book(scored, probability, cfg), scored.periods_per_year)
    return metrics.sharpe_net if metrics.valid else 0.0
