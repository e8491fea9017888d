"""Does what the reward pays carry over to data it never saw? Reward–holdout agreement and backtest overfitting.

An RL loop selects: the policy's weights learn the reward window, and the best of hundreds of
experiments on one window looks good whether or not anything is there. Two numbers say whether
the reward is worth learning from; every run reports both (post-mortem headline and MLflow).

- **Reward–holdout agreement**: Spearman's rank correlation between the experiments' net Sharpe on
  the reward window (what the reward is monotone in, within a cycle) and on the final holdout,
  across the experiments evaluated on both (a run's best and a random sample of the rest, so that
  the range is not the top alone), with a 95% bootstrap interval (experiments resampled with
  replacement). Positive, the interval above 0: a policy that writes more of what the reward pays
  does better out of sample. An interval around 0: the reward's ranking says nothing about data
  it never saw, and no RL on it can carry over.
- **PBO**, the probability of backtest overfitting (Bailey, Borwein, López de Prado & Zhu, 2015:
  combinatorially symmetric cross-validation): the reward folds' scored bars are cut into
  `BLOCKS` consecutive blocks; for each of the C(BLOCKS, BLOCKS/2) ways of calling half of them
  "in sample", the experiment with the best in-sample Sharpe is ranked among all of them on the
  other half; PBO is the share of splits where it lands in the bottom half. At 0.5 or above,
  picking the best by the reward window is no better than picking at random.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import bootstrap, rankdata, spearmanr

#: Blocks of the CSCV split (C(16, 8) = 12,870 splits).
BLOCKS = 16
#: Bootstrap resamples of the agreement's interval.
RESAMPLES = 2000
#: Fewest experiments evaluated on both windows for an agreement to be stated.
MIN_AGREEMENT_EXPERIMENTS = 5


class Agreement(BaseModel):
    """Spearman's rho between reward-window and holdout net Sharpe, with its 95% bootstrap interval."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rho: float
    lo: float
    hi: float
    n: int

    def sentence(self) -> str:
        verdict = (
            "what the reward pays carries over"
            if self.lo > 0
            else "the reward's ranking does not carry over"
            if self.hi < 0
            else "not distinguishable from no agreement: the reward carries no transferable signal here"
        )
        return f"{self.rho:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}] over {self.n} experiments: {verdict}"


class Selection(BaseModel):
    """Whether a run's reward is worth learning from: agreement and PBO (None where there was too little)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agreement: Agreement | None
    pbo: float | None
    pbo_experiments: int

    def metrics(self) -> dict[str, float]:
        """The numbers as MLflow metrics of the run."""
        values: dict[str, float] = {}
        if self.agreement is not None:
            a = self.agreement
            values |= {"reward_holdout_spearman": a.rho, "reward_holdout_spearman_lo": a.lo}
            values |= {"reward_holdout_spearman_hi": a.hi}
        if self.pbo is not None:
            values["pbo"] = self.pbo
        return values


def agreement(reward_sharpe: np.ndarray, holdout_sharpe: np.ndarray, seed: int = 0) -> Agreement | None:
    """The rank agreement of paired reward-window and holdout results (None with fewer than the minimum)."""
    x, y = np.asarray(reward_sharpe, dtype=float), np.asarray(holdout_sharpe, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < MIN_AGREEMENT_EXPERIMENTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rho = float(spearmanr(x, y).statistic)

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        value = spearmanr(a, b).statistic
        return 0.0 if math.isnan(value) else float(value)  # a resample with one distinct value: no order

    interval = bootstrap(
        (x, y),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return Agreement(rho=rho, lo=float(interval.low), hi=float(interval.high), n=len(x))


def probability_of_backtest_overfitting(returns: np.ndarray, blocks: int = BLOCKS) -> float | None:
    """PBO of picking the best column of `returns` (bars × experiments, per-bar net returns) by its Sharpe.

    None with fewer than two experiments or fewer than two bars per block.
    """
    returns = np.asarray(returns, dtype=float)
    n_bars, n_experiments = returns.shape
    if n_experiments < 2 or n_bars < 2 * blocks:
        return None
    starts = np.linspace(0, n_bars, blocks + 1).astype(int)[:-1]
    sums = np.add.reduceat(returns, starts, axis=0)  # (blocks, experiments)
    squares = np.add.reduceat(returns**2, starts, axis=0)
    counts = np.diff(np.append(starts, n_bars)).astype(float)
    splits = np.array(list(itertools.combinations(range(blocks), blocks // 2)))
    in_sample = np.zeros((len(splits), blocks))
    in_sample[np.arange(len(splits))[:, None], splits] = 1.0
    below = 0
    for chunk in np.array_split(in_sample, max(1, len(splits) // 1000)):
        chosen = _sharpe(chunk @ sums, chunk @ squares, chunk @ counts).argmax(axis=1)
        outside = 1.0 - chunk
        out_of_sample = _sharpe(outside @ sums, outside @ squares, outside @ counts)
        rank = rankdata(out_of_sample, axis=1)[np.arange(len(chunk)), chosen]  # 1 = the worst
        relative = rank / (n_experiments + 1)
        below += int((np.log(relative / (1 - relative)) <= 0).sum())
    return below / len(splits)


def _sharpe(sums: np.ndarray, squares: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-bar Sharpe ratios from sums, sums of squares and counts (rows: splits; columns: experiments)."""
    n = counts[:, None]
    mean = sums / n
    variance = np.maximum(squares / n - mean**2, 0.0) * n / np.maximum(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(variance > 0, mean / np.sqrt(variance), 0.0)
