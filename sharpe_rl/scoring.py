"""Host-side scoring: out-of-sample probabilities → positions → portfolio returns → `Metrics` → reward.

Every reward of the RL loop is computed here, outside the sandbox, from the predictions the
sandbox returned and the panel the host trusts. The conventions below are the contract; each
is tested in tests/test_scoring.py.

Timing
    The panel's timeline is the sorted union of its bar timestamps (bar open times). A prediction
    at bar t may use everything up to the close of bar t; it sets the weight w_t, which earns the
    close-to-close return r_{t+1} = close_{t+1} / close_t − 1 of the *next* bar of the timeline.
    A position never earns the return of its own bar. The last bar of the panel has no next bar
    and is never scored, which is why the reward is scored on the panel cut at the end of the
    reward window (`sharpe_rl.data.splits.reward_panel`): no return reaches into the holdout.

Positions
    An asset is tradable at bar t when it has a finite positive close at t and at t + 1; a
    prediction is usable when it is finite and the asset is tradable. Unusable → flat.
    - ``per_asset``: w = (2p − 1) / n_t, n_t = the number of assets with a usable prediction at t,
      so the gross exposure Σ|w| ≤ 1 (= 1 only when every prediction is 0 or 1).
    - ``cross_sectional``: ranks of p among the usable assets at t (ties get the average rank),
      minus their mean, scaled so Σ|w| = 1; market-neutral. Fewer than two usable assets, or all
      ranks tied → flat.
    Target weights are set at decisions — the bars `sharpe_rl.data.clock.decision_mask` names from
    the first scored bar on (by default once a day for intraday bars, every bar for daily ones), the
    same ones the sandbox is asked at — and held unchanged until the next (weights are constant, price
    drift inside the holding period is not traded; flat before the first decision). A held asset
    that stops being tradable is closed.

Timing, not tilts (`EvalConfig.timing_only`, on by default)
    A fixed ranking (long two coins, short one, for the whole window) is a bet on relative drift
    chosen in hindsight through the reward, not a forecast. So returns are earned by each weight
    minus that symbol's average weight over its fold's scored bars (the fold of each bar is the
    `fold` column of the predictions; one fold when there is none): a ranking that never changes
    within a fold earns nothing but its costs, and what changes over time (a slow momentum rank)
    still earns. Costs are paid on the weights actually held.

Returns and costs
    gross_t = Σ_i (w_{t,i} − w̄_{f(t),i}) r_{t+1,i}, w̄_{f,i} the average weight of symbol i over the
    scored bars of fold f (0 when `timing_only` is off);  turnover_t = Σ_i |w_{t,i} − w_{t−1,i}| with
    w_{−1} = 0 (the initial entry is paid; the final exit is not);  net_t = gross_t − fee_bps / 1e4 ×
    turnover_t.
    The scored bars run from the first decision to the last predicted bar that has a next bar; bars
    inside that span without a usable prediction are flat and still count.

Metrics
    Sharpe = mean / sample standard deviation (ddof 1) × √(periods per year), with periods per year
    = 365 days / the panel's bar interval (`detect_interval`; a 24/7 market). Sortino uses the downside deviation
    √(mean(min(r, 0)²)) over all bars (target 0). Max drawdown is of the compounded net equity
    curve Π(1 + net_t) starting at 1, as a positive fraction. Hit rate = share of bars with a
    non-zero position whose gross return is > 0. PSR and DSR (Bailey & López de Prado 2012, 2014)
    use the per-bar (non-annualised) net Sharpe and the skewness and (non-excess) kurtosis of the
    net returns.

Degenerate predictions never raise from `score_predictions`: it returns `Metrics(valid=False,
reason=...)` with zeros/None in place of numbers. Every reason is the model's fault as far as the
reward goes (`Metrics.error_class` is `ErrorClass.bad_predictions`). The panel is the host's own
validated data: a panel without `timestamp`, `symbol` and `close` is a host bug and raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict
from scipy.special import ndtr, ndtri
from scipy.stats import kurtosis, rankdata, skew

from sharpe_rl.config import EvalConfig, RewardConfig
from sharpe_rl.data.clock import Clock, decision_mask
from sharpe_rl.data.panel import detect_interval
from sharpe_rl.sandbox.contract import ErrorClass

#: Fewest scored bars: a sample standard deviation needs two returns.
MIN_SCORED_BARS = 2
#: A per-bar return standard deviation below this is a flat strategy, not a very steady one.
ZERO_VARIANCE_STD = 1e-12
EULER_MASCHERONI = 0.5772156649015329
_YEAR = timedelta(days=365)
_TIMESTAMP = pl.Datetime("us", "UTC")


class Degenerate(StrEnum):
    """Why a set of predictions cannot be scored."""

    bad_schema = "bad_schema"  # columns missing or of a type that does not convert
    empty = "empty"  # no prediction rows
    unknown_bars = "unknown_bars"  # a (timestamp, symbol) the scored panel does not have
    duplicate_bars = "duplicate_bars"  # two predictions for one (timestamp, symbol)
    out_of_range = "out_of_range"  # p_up outside [0, 1] or infinite
    all_nan = "all_nan"  # not one finite prediction
    too_few_bars = "too_few_bars"  # fewer than MIN_SCORED_BARS scored returns
    zero_variance = "zero_variance"  # the strategy's net returns do not move (always flat)


class DegeneratePredictions(ValueError):
    """Raised by `backtest` for input that cannot be scored; `score_predictions` turns it into Metrics."""

    def __init__(self, reason: Degenerate, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Metrics(BaseModel):
    """Out-of-sample performance of one prediction set; all numbers finite (NaN is rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    valid: bool
    reason: Degenerate | None = None
    message: str | None = None
    n_bars: int = 0
    periods_per_year: float = 0.0
    sharpe_gross: float = 0.0
    sharpe_net: float = 0.0
    sortino_net: float | None = None  # None when there is no losing bar (unbounded)
    max_drawdown: float = 0.0
    turnover: float = 0.0  # average Σ|Δw| per bar
    hit_rate: float = 0.0
    skewness: float | None = None
    kurtosis: float | None = None  # non-excess: 3 for a normal distribution
    psr: float = 0.0  # P(true Sharpe > 0)
    dsr: float = 0.0  # P(true Sharpe > expected maximum of the trials' Sharpe ratios)

    @property
    def error_class(self) -> ErrorClass | None:
        """The error class of an unscorable prediction set, None for a valid one."""
        return None if self.valid else ErrorClass.bad_predictions


@dataclass(frozen=True)
class Backtest:
    """The book behind a score: weights per (bar, symbol) and the portfolio return per bar."""

    weights: pl.DataFrame  # timestamp, symbol, weight (scored bars × symbols of the panel)
    returns: pl.DataFrame  # timestamp, gross_return, turnover, cost, net_return
    periods_per_year: float


@dataclass(frozen=True)
class Market:
    """The scored bars of a panel as arrays: what any prediction set on those bars is scored against."""

    bar_of: pl.DataFrame  # timestamp -> bar (position in the panel's timeline)
    column_of: pl.DataFrame  # symbol -> column
    timestamps: np.ndarray  # the scored bars, datetime64[us]
    symbols: list[str]
    first_bar: int  # the first scored bar's position in the timeline
    next_return: np.ndarray  # (scored bars, symbols): close-to-close return of the next bar, 0 where not tradable
    tradable: np.ndarray  # (scored bars, symbols): a finite positive close at t and t + 1
    fold: np.ndarray  # the fold of each scored bar
    decision: np.ndarray  # whether each scored bar is a decision (`sharpe_rl.data.clock.decision_mask`)
    periods_per_year: float


@dataclass(frozen=True)
class Book:
    """The weights a probability matrix takes on a market, and what they earn per bar."""

    weights: np.ndarray  # (bars, symbols): held
    gross: np.ndarray
    turnover: np.ndarray
    cost: np.ndarray
    net: np.ndarray


def score_predictions(
    predictions: pl.DataFrame,
    panel: pl.DataFrame,
    cfg: EvalConfig,
    *,
    bar_interval: timedelta | None = None,
) -> Metrics:
    """Score out-of-sample predictions `(timestamp, symbol, fold, p_up)` against `panel`; never raises.

    Pass the reward-window panel for the reward and the full panel for the holdout. The DSR is that
    of one trial (equal to the PSR): `deflate` sets it once the run's trial count is known.
    `bar_interval` skips re-detecting the panel's interval when the caller scores many prediction
    sets on one panel (it must be `detect_interval(panel)`, e.g. from the data card).
    """
    try:
        scored, held = _run_book(predictions, panel, cfg, bar_interval)
    except DegeneratePredictions as exc:
        return Metrics(valid=False, reason=exc.reason, message=exc.message)
    return metrics_of(held, scored.periods_per_year)


def backtest(
    predictions: pl.DataFrame, panel: pl.DataFrame, cfg: EvalConfig, *, bar_interval: timedelta | None = None
) -> Backtest:
    """The weights and per-bar returns `score_predictions` scores; raises `DegeneratePredictions`."""
    scored, held = _run_book(predictions, panel, cfg, bar_interval)
    n_bars, n_symbols = held.weights.shape
    timestamps = pl.Series("timestamp", scored.timestamps).dt.replace_time_zone("UTC")
    weights = pl.DataFrame(
        {
            "timestamp": timestamps.gather(np.repeat(np.arange(n_bars), n_symbols)),
            "symbol": pl.Series(scored.symbols, dtype=pl.String).gather(np.tile(np.arange(n_symbols), n_bars)),
            "weight": held.weights.ravel(),
        }
    )
    returns = pl.DataFrame(
        {
            "timestamp": timestamps,
            "gross_return": held.gross,
            "turnover": held.turnover,
            "cost": held.cost,
            "net_return": held.net,
        }
    )
    return Backtest(weights=weights, returns=returns, periods_per_year=scored.periods_per_year)


def market(
    panel: pl.DataFrame, rows: pl.DataFrame, cfg: EvalConfig, *, bar_interval: timedelta | None = None
) -> Market:
    """The market that prediction rows `(timestamp, symbol, fold)` are scored on: from their first bar to their last
    bar that has a next bar in `panel`; raises `DegeneratePredictions` when a row is not a bar of the panel."""
    panel = panel.select(pl.col("timestamp").cast(_TIMESTAMP), "symbol", "close")
    timeline = panel.get_column("timestamp").unique().sort()
    symbols = panel.get_column("symbol").unique().sort()
    if timeline.len() < MIN_SCORED_BARS + 1:
        raise DegeneratePredictions(
            Degenerate.too_few_bars, f"the panel has {timeline.len()} bars; scoring needs at least 3"
        )
    bar_of = pl.DataFrame({"timestamp": timeline, "bar": np.arange(timeline.len())})
    column_of = pl.DataFrame({"symbol": symbols, "column": np.arange(symbols.len())})
    priced = panel.join(bar_of, on="timestamp").join(column_of, on="symbol")
    located = rows.select(pl.col("timestamp").cast(_TIMESTAMP), pl.col("symbol").cast(pl.String), "fold").join(
        priced, on=["timestamp", "symbol"], how="left"
    )
    unknown = located.filter(pl.col("bar").is_null())
    if unknown.height:
        first = unknown.row(0, named=True)
        raise DegeneratePredictions(
            Degenerate.unknown_bars,
            f"{unknown.height} predictions are for (timestamp, symbol) bars the scored panel does not have "
            f"(first: {first['symbol']} at {first['timestamp']})",
        )
    shape = (timeline.len(), symbols.len())
    close = np.full(shape, np.nan)
    close[priced.get_column("bar").to_numpy(), priced.get_column("column").to_numpy()] = priced.get_column(
        "close"
    ).to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        next_return = close[1:] / close[:-1] - 1.0
    # a return exists only between two finite positive closes; anything else is "cannot trade"
    tradable = np.isfinite(next_return) & (close[:-1] > 0) & (close[1:] > 0)

    bars = located.get_column("bar").to_numpy()
    interval = bar_interval or detect_interval(panel)
    timeline_ns = timeline.dt.epoch("ns").to_numpy()
    decisions = decision_mask(timeline_ns, int(bars.min()), Clock.of(cfg, interval))
    # scored from the first decision (nothing is held before it) to the last bar that has a next bar
    first_bar = int(np.argmax(decisions)) if decisions.any() else int(bars.min())
    last_bar = min(int(bars.max()), shape[0] - 2)  # the panel's last bar has no next bar
    n_scored = last_bar - first_bar + 1
    if n_scored < MIN_SCORED_BARS:
        raise DegeneratePredictions(
            Degenerate.too_few_bars,
            f"{max(n_scored, 0)} scored bars (predictions must cover at least {MIN_SCORED_BARS} bars "
            "that have a next bar in the panel)",
        )
    scored = slice(first_bar, last_bar + 1)
    # each scored bar's fold: the (latest) fold predicted at it, else the fold of the bar before
    fold = np.full(shape[0], -1, dtype=np.int64)
    np.maximum.at(fold, bars, located.get_column("fold").to_numpy().astype(np.int64))
    fold = np.maximum.accumulate(np.maximum.accumulate(fold)[scored])
    return Market(
        bar_of=bar_of,
        column_of=column_of,
        timestamps=timeline.to_numpy()[scored],
        symbols=symbols.to_list(),
        first_bar=first_bar,
        next_return=np.where(tradable[scored], next_return[scored], 0.0),
        tradable=tradable[scored],
        fold=fold,
        decision=decisions[scored],
        periods_per_year=_YEAR / interval,
    )


def book(market: Market, probability: np.ndarray, cfg: EvalConfig) -> Book:
    """What a probability matrix (scored bars × symbols, NaN for none) earns on `market` (see the module docstring)."""
    usable = market.tradable & np.isfinite(probability)
    target = _target_weights(probability, usable, cfg.scheme)
    n_scored, n_symbols = probability.shape
    # hold the weights set at each decision until the next; flat before the first; close what can no longer trade
    decided = np.maximum.accumulate(np.where(market.decision, np.arange(n_scored), -1))
    held = np.where(decided[:, None] >= 0, target[np.maximum(decided, 0)], 0.0)
    weights = np.where(market.tradable, held, 0.0)
    earning = weights - _fold_means(weights, market.fold) if cfg.timing_only else weights
    gross = (earning * market.next_return).sum(axis=1)
    turnover = np.abs(np.diff(weights, axis=0, prepend=np.zeros((1, n_symbols)))).sum(axis=1)
    cost = cfg.fee_bps / 1e4 * turnover
    return Book(weights=weights, gross=gross, turnover=turnover, cost=cost, net=gross - cost)


def _fold_means(weights: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each bar's row of its fold's average weights."""
    folds, bar_fold = np.unique(fold, return_inverse=True)
    sums = np.zeros((len(folds), weights.shape[1]))
    np.add.at(sums, bar_fold, weights)
    return (sums / np.bincount(bar_fold)[:, None])[bar_fold]


def _run_book(
    predictions: pl.DataFrame, panel: pl.DataFrame, cfg: EvalConfig, bar_interval: timedelta | None
) -> tuple[Market, Book]:
    predictions = _clean_predictions(predictions)
    scored = market(panel, predictions, cfg, bar_interval=bar_interval)
    located = (
        predictions.join(scored.bar_of, on="timestamp")
        .join(scored.column_of, on="symbol")
        .with_columns(pl.col("bar") - scored.first_bar)
        .filter(pl.col("bar") < len(scored.timestamps))
    )
    probability = np.full(scored.next_return.shape, np.nan)
    probability[located.get_column("bar").to_numpy(), located.get_column("column").to_numpy()] = located.get_column(
        "p_up"
    ).to_numpy()
    return scored, book(scored, probability, cfg)


def _clean_predictions(predictions: pl.DataFrame) -> pl.DataFrame:
    """Typed `(timestamp, symbol, p_up)` rows, NaN for missing; raises on anything unscorable."""
    missing = {"timestamp", "symbol", "p_up"} - set(predictions.columns)
    if missing:
        raise DegeneratePredictions(Degenerate.bad_schema, f"predictions lack the columns {sorted(missing)}")
    if predictions.height == 0:
        raise DegeneratePredictions(Degenerate.empty, "no prediction rows")
    try:
        cleaned = predictions.select(
            pl.col("timestamp").cast(_TIMESTAMP),
            pl.col("symbol").cast(pl.String),
            pl.col("fold").cast(pl.Int64) if "fold" in predictions.columns else pl.lit(0, pl.Int64).alias("fold"),
            pl.col("p_up").cast(pl.Float64).fill_null(float("nan")),
        )
    except pl.exceptions.PolarsError as exc:
        raise DegeneratePredictions(Degenerate.bad_schema, f"predictions do not convert: {exc}") from exc
    if cleaned.get_column("timestamp").null_count() or cleaned.get_column("symbol").null_count():
        raise DegeneratePredictions(Degenerate.bad_schema, "predictions have null timestamps or symbols")
    if cleaned.select(pl.struct("timestamp", "symbol").is_duplicated().any()).item():
        raise DegeneratePredictions(Degenerate.duplicate_bars, "more than one prediction for a (timestamp, symbol)")

    p_up = cleaned.get_column("p_up").to_numpy()
    finite = np.isfinite(p_up)
    if np.isinf(p_up).any() or (p_up[finite] < 0).any() or (p_up[finite] > 1).any():
        raise DegeneratePredictions(Degenerate.out_of_range, "p_up must be a probability in [0, 1] (or NaN for none)")
    if not finite.any():
        raise DegeneratePredictions(Degenerate.all_nan, "every prediction is NaN")
    n_predicted_bars = cleaned.filter(pl.col("p_up").is_not_nan()).get_column("timestamp").n_unique()
    if n_predicted_bars < MIN_SCORED_BARS:
        raise DegeneratePredictions(
            Degenerate.too_few_bars, f"predictions for {n_predicted_bars} bar(s); scoring needs {MIN_SCORED_BARS}"
        )
    return cleaned


def _target_weights(
    probability: np.ndarray, usable: np.ndarray, scheme: Literal["per_asset", "cross_sectional"]
) -> np.ndarray:
    """Weights each bar would take if it were a rebalance bar (see the module docstring)."""
    n_usable = usable.sum(axis=1, keepdims=True)
    if scheme == "per_asset":
        signal = np.where(usable, 2.0 * probability - 1.0, 0.0)
        return signal / np.maximum(n_usable, 1)
    ranks = rankdata(np.where(usable, probability, np.nan), axis=1, nan_policy="omit")
    mean_rank = (n_usable + 1) / 2.0  # ranks 1..n average (n + 1) / 2, ties included
    demeaned = np.where(usable, ranks - mean_rank, 0.0)
    gross = np.abs(demeaned).sum(axis=1, keepdims=True)
    return np.divide(demeaned, gross, out=np.zeros_like(demeaned), where=(gross > 0) & (n_usable >= 2))


def metrics_of(book: Book, periods_per_year: float) -> Metrics:
    """The metrics of a book (invalid, `zero_variance`, when its net returns never move)."""
    if float(np.std(book.net)) < ZERO_VARIANCE_STD:
        return Metrics(
            valid=False,
            reason=Degenerate.zero_variance,
            message="the net returns never move: every position is flat or the strategy cannot trade",
            n_bars=len(book.net),
        )
    ppy = periods_per_year
    net = book.net
    n_bars = len(net)
    sharpe_per_bar = _sharpe_per_bar(net)
    skewness = float(skew(net, bias=True))
    kurt = float(kurtosis(net, fisher=False, bias=True))
    in_market = np.abs(book.weights).sum(axis=1) > 0
    hit_rate = float((book.gross[in_market] > 0).mean()) if in_market.any() else 0.0
    psr = probabilistic_sharpe_ratio(sharpe_per_bar, n_bars, skewness, kurt)
    return Metrics(
        valid=True,
        n_bars=n_bars,
        periods_per_year=ppy,
        sharpe_gross=sharpe_annualized(book.gross, ppy),
        sharpe_net=sharpe_per_bar * math.sqrt(ppy),
        sortino_net=sortino_annualized(net, ppy),
        max_drawdown=max_drawdown(net),
        turnover=float(book.turnover.mean()),
        hit_rate=hit_rate,
        skewness=skewness,
        kurtosis=kurt,
        psr=psr,
        dsr=psr,  # one trial: `deflate` sets the DSR once the run's trial count is known
    )


def _sharpe_per_bar(returns: np.ndarray) -> float:
    std = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
    return float(np.mean(returns)) / std if std >= ZERO_VARIANCE_STD else 0.0


def sharpe_annualized(returns: np.ndarray, periods_per_year: float) -> float:
    """mean / std (ddof 1) × √periods_per_year; 0.0 for fewer than two returns or no variance."""
    return _sharpe_per_bar(np.asarray(returns, dtype=float)) * math.sqrt(periods_per_year)


def sortino_annualized(returns: np.ndarray, periods_per_year: float) -> float | None:
    """mean / √(mean(min(r, 0)²)) × √periods_per_year; None when no return is negative."""
    returns = np.asarray(returns, dtype=float)
    downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2))) if len(returns) else 0.0
    if downside < ZERO_VARIANCE_STD:
        return None
    return float(np.mean(returns)) / downside * math.sqrt(periods_per_year)


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall of the compounded equity Π(1 + r) from a running peak (starting at 1), in [0, 1]."""
    equity = np.cumprod(1.0 + np.concatenate([[0.0], np.asarray(returns, dtype=float)]))
    drawdown = 1.0 - equity / np.maximum.accumulate(equity)
    return float(np.clip(drawdown.max(), 0.0, 1.0))


def probabilistic_sharpe_ratio(
    sharpe: float, n_obs: int, skewness: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """P(true Sharpe > benchmark) (Bailey & López de Prado 2012), all Sharpe ratios per bar.

    Φ((SR − SR*) √(n − 1) / √(1 − γ₃ SR + (γ₄ − 1)/4 SR²)), γ₄ the non-excess kurtosis. The
    denominator is positive for any real sample (γ₄ ≥ 1 + γ₃²); it is guarded anyway.
    """
    if n_obs < 2:
        return 0.0
    variance_term = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if not variance_term > 0:
        return 0.0
    return float(ndtr((sharpe - benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance_term)))


def expected_max_sharpe(n_trials: int, trials_sharpe_variance: float) -> float:
    """Expected maximum Sharpe of `n_trials` zero-skill trials (Bailey & López de Prado 2014, eq. 2).

    √V · ((1 − γ) Φ⁻¹(1 − 1/N) + γ Φ⁻¹(1 − 1/(N e))), γ the Euler–Mascheroni constant; in the units
    of the variance given. One trial (no selection) or no variance → 0.
    """
    if n_trials <= 1 or trials_sharpe_variance <= 0:
        return 0.0
    max_z = (1 - EULER_MASCHERONI) * ndtri(1 - 1 / n_trials) + EULER_MASCHERONI * ndtri(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(trials_sharpe_variance) * max_z)


def deflated_sharpe_ratio(
    sharpe: float, n_obs: int, skewness: float, kurtosis: float, n_trials: int, trials_sharpe_variance: float
) -> float:
    """PSR against the expected maximum Sharpe of the trials (Bailey & López de Prado 2014).

    `sharpe` and `trials_sharpe_variance` are per bar (divide an annualised variance by the
    periods per year).
    """
    benchmark = expected_max_sharpe(n_trials, trials_sharpe_variance)
    return probabilistic_sharpe_ratio(sharpe, n_obs, skewness, kurtosis, benchmark)


def deflate(metrics: Metrics, n_trials: int, trials_sharpe_variance: float) -> Metrics:
    """`metrics` with its DSR recomputed for a selection among `n_trials` (annualised Sharpe variance).

    The pipeline scores a batch first and knows how many trials the run has made only afterwards.
    """
    if not metrics.valid or metrics.skewness is None or metrics.kurtosis is None:
        return metrics
    ppy = metrics.periods_per_year
    dsr = deflated_sharpe_ratio(
        metrics.sharpe_net / math.sqrt(ppy),
        metrics.n_bars,
        metrics.skewness,
        metrics.kurtosis,
        n_trials,
        trials_sharpe_variance / ppy,
    )
    return metrics.model_copy(update={"dsr": dsr})


#: The rung of the penalty ladder each error class lands on — every class listed, on purpose:
#: a new class must be placed here, not fall through to a default.
PENALTY_RUNG: dict[ErrorClass, Literal["format", "runtime"]] = {
    ErrorClass.json_parse: "format",
    ErrorClass.schema: "format",
    ErrorClass.syntax: "format",
    ErrorClass.forbidden_import: "format",
    ErrorClass.missing_column: "runtime",
    ErrorClass.type_error: "runtime",
    ErrorClass.value_error: "runtime",
    ErrorClass.runtime_error: "runtime",
    ErrorClass.timeout: "runtime",
    ErrorClass.out_of_memory: "runtime",
    ErrorClass.bad_interface: "runtime",
    ErrorClass.bad_predictions: "runtime",
}


def shape_reward(
    outcome: Metrics | ErrorClass,
    cfg: RewardConfig,
    *,
    n_trials: int = 1,
    trials_sharpe_variance: float = 0.0,
    noskill_sigma: float | None = None,
) -> float:
    """The RL reward of one experiment, in [penalty_format, 1]; never NaN.

    A valid model earns a score in (−1, 1], monotone in the net Sharpe, by `cfg.luck_correction`:

    - ``evidence`` (the default): x / (1 + |x|) with x = (z − E[max z of n_trials]) / evidence_scale,
      where z = net Sharpe / `noskill_sigma` is the result in units of this panel's no-skill noise
      (`sharpe_rl.noskill`: no skill scores at most 0 in expectation, costs only subtract), and
      E[max z] = `expected_max_sharpe` of `n_trials` standard normal trials is what the best of the
      run's trials so far scores by luck alone. So a lucky 1.3-sigma draw earns little, and less as the
      run tries more; a 3-sigma result earns 0.6 as the first trial. The squash has heavy tails, so
      rewards stay graded far from 0 (−10 and −20 sigmas earn −0.86 and −0.92): PPO can tell
      experiments apart where a clip or a probability would saturate;
    - ``none``: clip(net Sharpe, ±sharpe_clip) / sharpe_clip;
    - ``deflated``: 2 × DSR − 1, the deflated Sharpe ratio (the probability that the true Sharpe
      beats the expected best of `n_trials` zero-skill trials whose annualised Sharpe ratios vary by
      `trials_sharpe_variance`) mapped to [−1, 1]; 0 for a coin flip;
    - ``shrunk``: as ``none``, on the net Sharpe minus that expected best Sharpe
      (`expected_max_sharpe`).

    A failure earns its rung of the fixed ladder (RewardConfig guarantees format < runtime < −1):
    errors found before anything ran (FORMAT_ERRORS) → `penalty_format`; everything that ran and
    failed, including degenerate (invalid) Metrics, which are `bad_predictions` → `penalty_runtime`.
    So any valid model, however bad, beats any failure.
    """
    if isinstance(outcome, ErrorClass):
        return cfg.penalty_format if PENALTY_RUNG[outcome] == "format" else cfg.penalty_runtime
    if not outcome.valid:
        return cfg.penalty_runtime
    sharpe = outcome.sharpe_net
    if cfg.luck_correction == "evidence":
        if noskill_sigma is None or not noskill_sigma > 0:
            raise ValueError("the evidence reward needs the panel's no-skill noise (noskill_sigma, from its band)")
        evidence = (sharpe / noskill_sigma - expected_max_sharpe(n_trials, 1.0)) / cfg.evidence_scale
        return evidence / (1.0 + abs(evidence))
    if cfg.luck_correction == "deflated":
        if outcome.skewness is None or outcome.kurtosis is None or outcome.periods_per_year <= 0:
            raise ValueError(
                "the deflated reward needs the metrics' skewness, kurtosis and periods per year "
                "(score_predictions sets them)"
            )
        return 2.0 * deflate(outcome, n_trials, trials_sharpe_variance).dsr - 1.0
    if cfg.luck_correction == "shrunk":
        sharpe -= expected_max_sharpe(n_trials, trials_sharpe_variance)
    clipped = min(max(sharpe, -cfg.sharpe_clip), cfg.sharpe_clip)
    return clipped / cfg.sharpe_clip


def reward_cap_sharpe(cfg: RewardConfig) -> float | None:
    """The net Sharpe at which the reward reaches its cap, when it is a fixed one (clipped Sharpe rewards)."""
    return cfg.sharpe_clip if cfg.luck_correction in ("none", "shrunk") else None
