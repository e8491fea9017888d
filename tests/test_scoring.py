"""Scoring: known answers worked by hand, the timing of positions, both schemes, costs, degenerate input."""

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.splits import plan_evaluation, reward_panel, timeline
from sharpe_rl.sandbox.contract import ErrorClass
from sharpe_rl.scoring import (
    Degenerate,
    DegeneratePredictions,
    Metrics,
    backtest,
    deflate,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    max_drawdown,
    probabilistic_sharpe_ratio,
    score_predictions,
    sharpe_annualized,
    sortino_annualized,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
#: The mechanics of positions and costs, tested with what positions earn in full (timing_only off); what
#: timing_only takes out is tested on its own below.
NO_FEES = EvalConfig(scheme="per_asset", fee_bps=0, timing_only=False, decide_every=1)


def make_panel(closes: dict[str, list[float | None]], step: timedelta = DAY) -> pl.DataFrame:
    """A long panel with one row per (bar, symbol) whose close is not None."""
    rows = [
        (START + i * step, symbol, close)
        for symbol, series in closes.items()
        for i, close in enumerate(series)
        if close is not None
    ]
    frame = pl.DataFrame(rows, schema=["timestamp", "symbol", "close"], orient="row")
    return (
        frame.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
        .with_columns(open=pl.col("close"), high=pl.col("close"), low=pl.col("close"), volume=pl.lit(1.0))
        .select("timestamp", "symbol", "open", "high", "low", "close", "volume")
        .sort("timestamp", "symbol")
    )


def make_predictions(p_up: dict[str, list[float]], step: timedelta = DAY, first_bar: int = 0) -> pl.DataFrame:
    """Predictions for bars first_bar, first_bar + 1, ... (NaN = no prediction)."""
    rows = [
        (START + (first_bar + i) * step, symbol, 0, p) for symbol, series in p_up.items() for i, p in enumerate(series)
    ]
    frame = pl.DataFrame(rows, schema=["timestamp", "symbol", "fold", "p_up"], orient="row")
    return frame.with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")), pl.col("p_up").cast(pl.Float64))


def closes_from_returns(returns: list[float], first: float = 100.0) -> list[float]:
    return [first * float(np.prod([1 + r for r in returns[:i]])) for i in range(len(returns) + 1)]


def numbers_are_defined(metrics: Metrics) -> bool:
    values = [v for v in metrics.model_dump().values() if isinstance(v, float)]
    return all(math.isfinite(v) for v in values)


# --- known answers -----------------------------------------------------------------------------

RETURNS = [0.03, -0.01, -0.02, 0.04, 0.01]
# mean = 0.05 / 5 = 0.01; deviations 0.02, -0.02, -0.03, 0.03, 0.00; Σd² = 0.0026;
# sample variance = 0.0026 / 4 = 0.00065; Sharpe per bar = 0.01 / √0.00065 = 0.392232
SHARPE_DAILY_BARS = 0.01 / math.sqrt(0.00065) * math.sqrt(365)  # = 7.4936
# downside: min(r, 0)² = 0.0001 and 0.0004 → mean over 5 bars = 0.0001 → deviation 0.01
SORTINO_DAILY_BARS = 0.01 / 0.01 * math.sqrt(365)  # = 19.105
# equity 1.03 (peak), × 0.99 × 0.98 = 1.03 × 0.9702 (trough): drawdown = 1 − 0.9702
MAX_DRAWDOWN = 0.0298


def test_sharpe_sortino_drawdown_known_answers():
    assert sharpe_annualized(np.array(RETURNS), 365) == pytest.approx(SHARPE_DAILY_BARS, rel=1e-12)
    assert sortino_annualized(np.array(RETURNS), 365) == pytest.approx(SORTINO_DAILY_BARS, rel=1e-12)
    assert max_drawdown(np.array(RETURNS)) == pytest.approx(MAX_DRAWDOWN, rel=1e-12)


def test_a_fully_long_book_reproduces_the_known_answers_end_to_end():
    panel = make_panel({"BTC": closes_from_returns(RETURNS)})  # 6 daily bars → 5 next-bar returns
    metrics = score_predictions(make_predictions({"BTC": [1.0, 1.0, 1.0, 1.0, 1.0, 0.9]}), panel, NO_FEES)
    assert metrics.valid and metrics.n_bars == 5 and metrics.periods_per_year == 365
    assert metrics.sharpe_gross == pytest.approx(SHARPE_DAILY_BARS, rel=1e-9)
    assert metrics.sharpe_net == pytest.approx(SHARPE_DAILY_BARS, rel=1e-9)
    assert metrics.sortino_net == pytest.approx(SORTINO_DAILY_BARS, rel=1e-9)
    assert metrics.max_drawdown == pytest.approx(MAX_DRAWDOWN, rel=1e-9)
    assert metrics.hit_rate == pytest.approx(3 / 5)  # 0.03, 0.04, 0.01 are up
    assert metrics.turnover == pytest.approx(1 / 5)  # the initial entry (1.0) over 5 bars


def test_periods_per_year_follow_the_bar_interval():
    four_hours = timedelta(hours=4)
    panel = make_panel({"BTC": closes_from_returns(RETURNS)}, step=four_hours)
    predictions = make_predictions({"BTC": [1.0] * 5 + [0.9]}, step=four_hours)
    metrics = score_predictions(predictions, panel, NO_FEES)
    assert metrics.periods_per_year == 365 * 6
    assert score_predictions(predictions, panel, NO_FEES, bar_interval=four_hours) == metrics
    assert metrics.sharpe_gross == pytest.approx(0.01 / math.sqrt(0.00065) * math.sqrt(365 * 6), rel=1e-9)


def test_deflated_sharpe_matches_the_papers_numerical_example():
    # Bailey & López de Prado, "The Deflated Sharpe Ratio" (JPM 2014), section "A numerical
    # example": N = 100 trials whose annualised Sharpe ratios have variance V = 1/2; the selected
    # strategy has an annualised SR of 2.5 over 5 years of daily returns (T = 1250, 250 per year),
    # skewness −3 and kurtosis 10. The paper reports the non-annualised benchmark SR₀ ≈ 0.1132
    # (√(V/250) × 2.5306) against the observed 2.5/√250 ≈ 0.1581, and DSR ≈ 0.9004.
    per_year = 250
    sr0 = expected_max_sharpe(100, 0.5 / per_year)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(per_year), 1250, -3.0, 10.0, 100, 0.5 / per_year)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_deflate_gives_the_papers_dsr_from_the_annualised_figures_the_pipeline_holds():
    # The same example as the pipeline hands it over: Metrics carry the annualised Sharpe and the
    # periods per year, and `deflate` takes the annualised variance of the trials' Sharpe ratios.
    metrics = Metrics(valid=True, n_bars=1250, periods_per_year=250, sharpe_net=2.5, skewness=-3.0, kurtosis=10.0)
    assert round(deflate(metrics, n_trials=100, trials_sharpe_variance=0.5).dsr, 4) == 0.9004
    # given an annualised variance, the expected best trial is annualised: the paper's daily SR₀ × √250
    assert expected_max_sharpe(100, 0.5) / math.sqrt(250) == pytest.approx(0.1132, abs=5e-5)


def test_probabilistic_sharpe_hand_computed():
    # Normal returns (skew 0, kurtosis 3), SR = 0.1 per bar over n = 101 bars, benchmark 0:
    # z = 0.1 × √100 / √(1 − 0 + (3 − 1)/4 × 0.01) = 1 / √1.005 = 0.997509; PSR = Φ(z).
    z = 1 / math.sqrt(1.005)
    phi = 0.5 * (1 + math.erf(z / math.sqrt(2)))  # = 0.84058
    assert probabilistic_sharpe_ratio(0.1, 101, 0.0, 3.0) == pytest.approx(phi, rel=1e-12)
    # negative skew and fat tails widen the estimate's error: lower confidence for the same SR
    assert probabilistic_sharpe_ratio(0.1, 101, -3.0, 10.0) < phi
    # one trial (no selection) or no dispersion across trials: DSR is PSR against 0
    assert deflated_sharpe_ratio(0.1, 101, 0.0, 3.0, 1, 0.5) == pytest.approx(phi)
    assert deflated_sharpe_ratio(0.1, 101, 0.0, 3.0, 50, 0.0) == pytest.approx(phi)


def test_score_reports_psr_and_a_lower_dsr_for_many_trials():
    rng = np.random.default_rng(3)
    panel = make_panel({"BTC": closes_from_returns(list(rng.normal(0.002, 0.02, 400)))})
    predictions = make_predictions({"BTC": list(rng.uniform(0.55, 1.0, 400))})
    one = score_predictions(predictions, panel, NO_FEES)
    many = deflate(one, 200, 1.0)
    assert one.valid and one.dsr == pytest.approx(one.psr)
    assert 0 < many.dsr < one.psr < 1


# --- costs, rebalancing, schemes -----------------------------------------------------------------

TWO_ASSETS = make_panel({"A": [100, 110, 99, 99], "B": [50, 50, 55, 44]})
# next-bar returns: A +0.10, −0.10, 0.00; B 0.00, +0.10, −0.20
TWO_ASSET_PREDICTIONS = make_predictions({"A": [0.9, 0.9, 0.2], "B": [0.5, 0.1, 0.1]})


def test_turnover_and_costs_on_two_assets_by_hand():
    book = backtest(TWO_ASSET_PREDICTIONS, TWO_ASSETS, EvalConfig(scheme="per_asset", fee_bps=10, timing_only=False))
    # per asset (2p − 1) / 2: A 0.4, 0.4, −0.3; B 0.0, −0.4, −0.4
    weights = book.weights.sort("timestamp", "symbol").get_column("weight").to_list()
    assert weights == pytest.approx([0.4, 0.0, 0.4, -0.4, -0.3, -0.4])
    # gross: 0.4×0.1 = 0.04; 0.4×(−0.1) + (−0.4)×0.1 = −0.08; −0.3×0 + (−0.4)×(−0.2) = 0.08
    assert book.returns.get_column("gross_return").to_list() == pytest.approx([0.04, -0.08, 0.08])
    # turnover: entry |0.4| + |0| = 0.4; then |0| + |−0.4| = 0.4; then |−0.7| + |0| = 0.7
    assert book.returns.get_column("turnover").to_list() == pytest.approx([0.4, 0.4, 0.7])
    # cost = 10 bps × turnover
    assert book.returns.get_column("cost").to_list() == pytest.approx([0.0004, 0.0004, 0.0007])
    assert book.returns.get_column("net_return").to_list() == pytest.approx([0.0396, -0.0804, 0.0793])
    metrics = score_predictions(
        TWO_ASSET_PREDICTIONS, TWO_ASSETS, EvalConfig(scheme="per_asset", fee_bps=10, timing_only=False)
    )
    assert metrics.turnover == pytest.approx(1.5 / 3)
    net = np.array([0.0396, -0.0804, 0.0793])
    assert metrics.sharpe_net == pytest.approx(net.mean() / net.std(ddof=1) * math.sqrt(365))
    assert metrics.sharpe_gross > metrics.sharpe_net


@pytest.mark.parametrize(
    "cfg",
    [
        EvalConfig(scheme="per_asset", decide_every=2, timing_only=False),
        EvalConfig(scheme="per_asset", decide_every="2d", timing_only=False),  # daily bars: the same decisions
    ],
)
def test_positions_are_held_between_rebalances(cfg):
    book = backtest(TWO_ASSET_PREDICTIONS, TWO_ASSETS, cfg)
    # set at bar 0 (A 0.4, B 0), held through bar 1 whatever bar 1 predicts, reset at bar 2
    weights = book.weights.sort("timestamp", "symbol").get_column("weight").to_list()
    assert weights == pytest.approx([0.4, 0.0, 0.4, 0.0, -0.3, -0.4])
    # turnover is paid at rebalance bars only: 0.4, 0, |−0.7| + |−0.4|
    assert book.returns.get_column("turnover").to_list() == pytest.approx([0.4, 0.0, 1.1])
    assert book.returns.get_column("gross_return").to_list() == pytest.approx([0.04, -0.04, 0.08])


def weights_at_first_bar(p_up: dict[str, list[float]], scheme: str) -> dict[str, float]:
    panel = make_panel({symbol: [100.0, 101.0, 100.0] for symbol in p_up})
    book = backtest(make_predictions(p_up), panel, EvalConfig(scheme=scheme))
    first = book.weights.filter(pl.col("timestamp") == START)
    return dict(zip(first.get_column("symbol"), first.get_column("weight"), strict=True))


def test_per_asset_scheme_divides_by_the_assets_with_a_prediction():
    weights = weights_at_first_bar({"A": [0.9, 0.1], "B": [math.nan, 0.2], "C": [0.3, 0.4]}, "per_asset")
    # two usable predictions at the bar: A (2×0.9 − 1)/2 = 0.4, C (2×0.3 − 1)/2 = −0.2, B flat
    assert weights == pytest.approx({"A": 0.4, "B": 0.0, "C": -0.2})


def test_cross_sectional_scheme_is_demeaned_ranks_with_gross_one():
    p_up = {"A": [0.1, 0.2], "B": [0.4, 0.3], "C": [0.6, 0.1], "D": [0.7, 0.9]}
    weights = weights_at_first_bar(p_up, "cross_sectional")
    # ranks 1, 2, 3, 4; mean 2.5 → −1.5, −0.5, 0.5, 1.5; Σ|·| = 4
    assert weights == pytest.approx({"A": -0.375, "B": -0.125, "C": 0.125, "D": 0.375})
    tied = weights_at_first_bar({"A": [0.2, 0.1], "B": [0.2, 0.5], "C": [0.8, 0.3]}, "cross_sectional")
    # ranks 1.5, 1.5, 3; mean 2 → −0.5, −0.5, 1; Σ|·| = 2
    assert tied == pytest.approx({"A": -0.25, "B": -0.25, "C": 0.5})
    lonely = weights_at_first_bar({"A": [0.9, 0.1], "B": [math.nan, 0.6]}, "cross_sectional")
    assert lonely == {"A": 0.0, "B": 0.0}  # one usable asset: no cross-section, flat


# --- timing: a position never earns its own bar ---------------------------------------------------


def test_a_position_earns_the_next_bar_not_its_own():
    panel = make_panel({"BTC": [100.0, 110.0, 99.0, 108.9]})  # +10%, −10%, +10%
    # long only at bar 1, whose own return (100 → 110) was +10%; it must earn bar 2's −10%
    book = backtest(make_predictions({"BTC": [math.nan, 1.0, 0.5]}), panel, NO_FEES)
    assert book.returns.get_column("gross_return").to_list() == pytest.approx([0.0, -0.1, 0.0])


def random_walk_panel(n_bars: int, symbols: tuple[str, ...], seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return make_panel({s: closes_from_returns(list(rng.normal(0, 0.02, n_bars))) for s in symbols})


@pytest.mark.parametrize("scheme", ["per_asset", "cross_sectional"])
def test_perfect_foresight_of_the_next_bar_wins_and_knowing_the_own_bar_does_not(scheme):
    panel = random_walk_panel(2000, ("A", "B", "C"), seed=7)
    close = panel.pivot(on="symbol", index="timestamp", values="close").sort("timestamp")
    foresight, own_bar = {}, {}
    for symbol in ("A", "B", "C"):
        c = close.get_column(symbol).to_numpy()
        went_up = list((c[1:] > c[:-1]).astype(float))
        foresight[symbol] = [*went_up, 0.5]  # at bar t: the sign of bar t → t+1
        own_bar[symbol] = [0.5, *went_up]  # at bar t: the sign of bar t−1 → t, already known at t
    cfg = EvalConfig(fee_bps=0, scheme=scheme)
    assert score_predictions(make_predictions(foresight), panel, cfg).sharpe_net > 20
    # an annualised Sharpe over 2000 daily bars of noise has a standard error of about √(365/2000) ≈ 0.43
    assert abs(score_predictions(make_predictions(own_bar), panel, cfg).sharpe_net) < 1.5


def test_warm_up_rows_and_gaps_are_flat():
    panel = make_panel({"A": [100, 101, 102, 101, 103], "B": [10, None, 11, 12, 11]})
    predictions = make_predictions({"A": [math.nan, 0.8, 0.2, 0.9], "B": [0.9, math.nan, 0.1, 0.7]})
    predictions = predictions.filter(~((pl.col("symbol") == "B") & (pl.col("timestamp") == START + DAY)))
    book = backtest(predictions, panel, NO_FEES)
    weights = book.weights.sort("timestamp", "symbol").get_column("weight").to_list()
    # bar 0: A warm-up (NaN), B has no close at bar 1 (cannot trade) → both flat
    # bar 1: only A usable → (2×0.8 − 1)/1; bar 2: both → −0.6/2, −0.8/2; bar 3: 0.8/2, 0.4/2
    assert weights == pytest.approx([0.0, 0.0, 0.6, 0.0, -0.3, -0.4, 0.4, 0.2])


# --- degenerate input ---------------------------------------------------------------------------

PANEL = make_panel({"A": [100, 101, 99, 102, 103], "B": [10, 11, 10.5, 10, 11]})


def _degenerate_cases() -> list[tuple[str, pl.DataFrame, pl.DataFrame, EvalConfig, Degenerate]]:
    varied = make_predictions({"A": [0.2, 0.8, 0.4, 0.6], "B": [0.7, 0.3, 0.6, 0.5]})
    return [
        ("empty frame", varied.clear(), PANEL, NO_FEES, Degenerate.empty),
        ("missing column", varied.drop("p_up"), PANEL, NO_FEES, Degenerate.bad_schema),
        ("p_up not numeric", varied.with_columns(p_up=pl.lit("high")), PANEL, NO_FEES, Degenerate.bad_schema),
        ("all NaN", varied.with_columns(p_up=float("nan")), PANEL, NO_FEES, Degenerate.all_nan),
        ("all null", varied.with_columns(p_up=pl.lit(None, pl.Float64)), PANEL, NO_FEES, Degenerate.all_nan),
        ("one bar", varied.filter(pl.col("timestamp") == START), PANEL, NO_FEES, Degenerate.too_few_bars),
        (
            "only the last bar, which has no next bar",
            make_predictions({"A": [0.2], "B": [0.9]}, first_bar=4),
            PANEL,
            NO_FEES,
            Degenerate.too_few_bars,
        ),
        ("one-bar panel", varied, PANEL.filter(pl.col("timestamp") == START), NO_FEES, Degenerate.too_few_bars),
        (
            "prices never move",
            varied,
            make_panel({"A": [100.0] * 5, "B": [10.0] * 5}),
            NO_FEES,
            Degenerate.zero_variance,
        ),
        (
            "cross-section of one asset",
            make_predictions({"A": [0.2, 0.8, 0.4, 0.6]}),
            PANEL,
            EvalConfig(scheme="cross_sectional"),
            Degenerate.zero_variance,
        ),
        (
            "unknown symbol",
            varied.with_columns(pl.col("symbol").replace("B", "DOGE")),
            PANEL,
            NO_FEES,
            Degenerate.unknown_bars,
        ),
        (
            "symbol not listed yet at that bar",
            make_predictions({"A": [0.2, 0.8, 0.4, 0.6]}),
            make_panel({"A": [None, 101, 99, 102, 103], "B": [10, 11, 10.5, 10, 11]}),
            NO_FEES,
            Degenerate.unknown_bars,
        ),
        (
            "timestamp not in the panel",
            varied.with_columns(pl.col("timestamp") + timedelta(hours=1)),
            PANEL,
            NO_FEES,
            Degenerate.unknown_bars,
        ),
        ("duplicate rows", pl.concat([varied, varied]), PANEL, NO_FEES, Degenerate.duplicate_bars),
        ("p_up above 1", varied.with_columns(p_up=pl.col("p_up") + 0.5), PANEL, NO_FEES, Degenerate.out_of_range),
        (
            "p_up infinite",
            varied.with_columns(p_up=pl.when(pl.col("p_up") > 0.7).then(float("inf")).otherwise(pl.col("p_up"))),
            PANEL,
            NO_FEES,
            Degenerate.out_of_range,
        ),
    ]


@pytest.mark.parametrize(
    ("predictions", "panel", "cfg", "reason"),
    [case[1:] for case in _degenerate_cases()],
    ids=[case[0] for case in _degenerate_cases()],
)
def test_degenerate_input_is_invalid_with_a_reason_and_no_nan(predictions, panel, cfg, reason):
    metrics = score_predictions(predictions, panel, cfg)
    assert not metrics.valid
    assert metrics.reason == reason and metrics.message
    assert metrics.error_class == ErrorClass.bad_predictions
    assert numbers_are_defined(metrics)


def test_backtest_raises_what_score_predictions_reports():
    with pytest.raises(DegeneratePredictions, match="all_nan"):
        backtest(make_predictions({"A": [math.nan] * 4}), PANEL, NO_FEES)


def test_nanosecond_prediction_timestamps_are_accepted():
    predictions = make_predictions({"A": [0.2, 0.8, 0.4, 0.6]})
    as_ns = predictions.with_columns(pl.col("timestamp").cast(pl.Datetime("ns", "UTC")))
    assert score_predictions(as_ns, PANEL, NO_FEES) == score_predictions(predictions, PANEL, NO_FEES)


def test_metrics_reject_nan():
    with pytest.raises(ValueError):
        Metrics(valid=True, sharpe_net=float("nan"))


# --- the reward never reaches into the holdout -----------------------------------------------------


def test_reward_scoring_on_the_reward_panel_cannot_see_the_holdout():
    panel = random_walk_panel(300, ("A", "B"), seed=11)
    plan = plan_evaluation(timeline(panel), EvalConfig(scheme="per_asset", n_folds=2))
    rng = np.random.default_rng(0)
    in_tests = reward_panel(panel, plan).filter(pl.col("timestamp") >= plan.folds[0].test_start)
    predictions = in_tests.select("timestamp", "symbol", fold=pl.lit(0), p_up=pl.Series(rng.random(in_tests.height)))

    reward = score_predictions(predictions, reward_panel(panel, plan), EvalConfig(scheme="per_asset"))
    # a wild holdout (its first close would be the last test bar's next-bar return) changes nothing
    wild = panel.with_columns(
        close=pl.when(pl.col("timestamp") >= plan.holdout_start).then(pl.col("close") * 10).otherwise(pl.col("close"))
    )
    assert (
        reward.valid
        and score_predictions(predictions, reward_panel(wild, plan), EvalConfig(scheme="per_asset")) == reward
    )
    assert score_predictions(predictions, wild, EvalConfig(scheme="per_asset")) != reward  # why the cut matters
    # the last test bar has no next bar inside the reward window: it is not scored
    assert reward.n_bars == predictions.get_column("timestamp").n_unique() - 1
    # a prediction inside the holdout is refused by the reward scoring
    leaked = panel.filter(pl.col("timestamp") == plan.holdout_start).select(
        "timestamp", "symbol", fold=pl.lit(0), p_up=pl.lit(0.9)
    )
    assert (
        score_predictions(
            pl.concat([predictions, leaked]), reward_panel(panel, plan), EvalConfig(scheme="per_asset")
        ).reason
        == Degenerate.unknown_bars
    )


def test_deflate_recomputes_dsr_from_the_trials_and_leaves_everything_else():
    panel = _deflate_panel()
    predictions = panel.select(
        "timestamp", "symbol", pl.lit(0).alias("fold"), (pl.col("close").rank() / 1e4).alias("p_up")
    )
    alone = score_predictions(predictions, panel, EvalConfig(scheme="per_asset"))
    assert alone.dsr == alone.psr  # scored alone: one trial
    few, many = deflate(alone, 10, 0.8), deflate(alone, 50, 0.8)
    assert alone.psr > few.dsr > many.dsr > 0
    assert many.model_copy(update={"dsr": alone.dsr}) == alone
    assert deflate(alone, 1, 0.0).dsr == alone.psr


def _deflate_panel() -> pl.DataFrame:
    rng = np.random.default_rng(7)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    close = 100 * np.exp(np.cumsum(rng.normal(0.001, 0.02, 200)))
    return pl.DataFrame(
        {
            "timestamp": [start + timedelta(days=i) for i in range(200)],
            "symbol": ["BTCUSDT"] * 200,
            "open": close,
            "high": close,
            "low": close,
            "close": close,
            "volume": np.ones(200),
        }
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))


# --- timing, not static tilts (timing_only, the default) --------------------------------------------


def test_a_fixed_ranking_earns_nothing_but_its_entry_cost():
    # A drifts up, C down, B between: long A and short C for the whole window is a hindsight bet on
    # relative drift. In full it pays handsomely; as timing it earns nothing, and pays its entry.
    rng = np.random.default_rng(5)
    drift = {"A": 0.004, "B": 0.0, "C": -0.004}
    panel = make_panel({s: closes_from_returns(list(rng.normal(d, 0.01, 120))) for s, d in drift.items()})
    fixed = make_predictions({"A": [0.9] * 120, "B": [0.5] * 120, "C": [0.1] * 120})
    wiggle = fixed.with_columns(p_up=pl.col("p_up") + 2e-9 * (pl.int_range(pl.len()) % 7))  # ranks unchanged
    in_full = score_predictions(fixed, panel, EvalConfig(timing_only=False))
    assert in_full.valid and in_full.sharpe_net > 5
    for predictions in (fixed, wiggle):
        timing = backtest(predictions, panel, EvalConfig())
        net = timing.returns.get_column("net_return").to_numpy()
        assert timing.returns.get_column("gross_return").to_numpy() == pytest.approx(np.zeros(len(net)), abs=1e-15)
        assert net[0] == pytest.approx(-10 / 1e4 * 1.0) and not net[1:].any()  # the entry (gross 1), then nothing
        assert score_predictions(predictions, panel, EvalConfig()).sharpe_net < 0


def test_a_ranking_fixed_within_each_fold_earns_nothing_and_one_that_changes_does():
    rng = np.random.default_rng(6)
    panel = make_panel({s: closes_from_returns(list(rng.normal(0, 0.01, 80))) for s in ("A", "B")})
    # fold 0 long A, fold 1 long B: static inside each fold (a tilt per fold)
    per_fold = pl.concat(
        [
            make_predictions({"A": [0.8] * 40, "B": [0.2] * 40}).with_columns(fold=pl.lit(0)),
            make_predictions({"A": [0.2] * 40, "B": [0.8] * 40}, first_bar=40).with_columns(fold=pl.lit(1)),
        ]
    )
    gross = backtest(per_fold, panel, EvalConfig(fee_bps=0)).returns.get_column("gross_return").to_numpy()
    assert gross == pytest.approx(np.zeros(len(gross)), abs=1e-15)
    # knowing which of the two does better over the next bar is timing: it earns about as much as in full
    close = {s: panel.filter(pl.col("symbol") == s).get_column("close").to_numpy() for s in ("A", "B")}
    a_beats_b = close["A"][1:] / close["A"][:-1] > close["B"][1:] / close["B"][:-1]
    up = {"A": [*a_beats_b.astype(float), 0.5], "B": [*(~a_beats_b).astype(float), 0.5]}
    timing = score_predictions(make_predictions(up), panel, EvalConfig(fee_bps=0))
    full = score_predictions(make_predictions(up), panel, EvalConfig(fee_bps=0, timing_only=False))
    assert timing.valid and timing.sharpe_net > 10 and timing.sharpe_net == pytest.approx(full.sharpe_net, rel=0.2)


def test_timing_returns_are_the_weights_minus_their_fold_average_by_hand():
    # two folds of two bars; one asset, weights 2p - 1: 0.8, 0.4 | 0.0, -0.4; the fold means 0.6 | -0.2
    panel = make_panel({"A": [100, 110, 99, 99, 108.9]})  # next-bar returns +0.1, -0.1, 0, +0.1
    predictions = pl.concat(
        [
            make_predictions({"A": [0.9, 0.7]}).with_columns(fold=pl.lit(0)),
            make_predictions({"A": [0.5, 0.3]}, first_bar=2).with_columns(fold=pl.lit(1)),
        ]
    )
    cfg = EvalConfig(scheme="per_asset", fee_bps=0)
    returns = backtest(predictions, panel, cfg).returns.get_column("gross_return").to_list()
    # earning weights 0.8 - 0.6 = 0.2, 0.4 - 0.6 = -0.2 | 0.0 + 0.2 = 0.2, -0.4 + 0.2 = -0.2
    assert returns == pytest.approx([0.2 * 0.1, -0.2 * -0.1, 0.2 * 0.0, -0.2 * 0.1])
