"""How much trading costs decide a score: a LightGBM long/short on the 4h Binance panel, gross vs net.

One LightGBM classifier, pooled over all symbols, with a few return/volatility features per symbol,
is trained on each walk-forward fold of `plan_evaluation` (horizon 1: label = the next bar's
direction) and on the holdout fold. Its out-of-sample probabilities are scored on the reward
window (and on the holdout) with both position schemes, at 0 and 10 bps, rebalancing every bar
and every few bars. Prints gross and net Sharpe, turnover and hit rate per setting.

    .venv/bin/python bench/cost_sensitivity.py [--panel PATH] [--estimators N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightgbm as lgb
import polars as pl

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.data.splits import Fold, plan_evaluation, reward_panel, timeline
from sharpe_rl.scoring import score_predictions

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_4h.parquet"
FEATURES = ["ret_1", "ret_3", "ret_6", "ret_12", "ret_24", "vol_12", "vol_48", "z_ret_1", "range", "volume_ratio"]
# (scheme, rebalance every, fee in bps): per-bar rebalancing with and without costs, then slower books
SETTINGS = [
    ("per_asset", 1, 0.0),
    ("per_asset", 1, 10.0),
    ("per_asset", 3, 10.0),
    ("per_asset", 6, 10.0),
    ("per_asset", 12, 10.0),
    ("cross_sectional", 1, 0.0),
    ("cross_sectional", 1, 10.0),
    ("cross_sectional", 3, 10.0),
    ("cross_sectional", 6, 10.0),
    ("cross_sectional", 12, 10.0),
]


def features_and_labels(panel: pl.DataFrame) -> pl.DataFrame:
    """Per-symbol features that use closes up to bar t only, and the label sign(close_{t+1} / close_t − 1)."""
    log_close = pl.col("close").log()
    ret_1 = log_close.diff()
    return (
        panel.sort("symbol", "timestamp")
        .with_columns(
            *[(log_close - log_close.shift(k)).over("symbol").alias(f"ret_{k}") for k in (1, 3, 6, 12, 24)],
            ret_1.rolling_std(12).over("symbol").alias("vol_12"),
            ret_1.rolling_std(48).over("symbol").alias("vol_48"),
            ((pl.col("high") - pl.col("low")) / pl.col("close")).alias("range"),
            _ratio(pl.col("volume"), pl.col("volume").rolling_mean(48)).over("symbol").alias("volume_ratio"),
            (pl.col("close").shift(-1) > pl.col("close")).over("symbol").cast(pl.Int8).alias("label"),
        )
        .with_columns(_ratio(pl.col("ret_1"), pl.col("vol_48")).alias("z_ret_1"))
        .sort("timestamp", "symbol")
    )


def _ratio(numerator: pl.Expr, denominator: pl.Expr) -> pl.Expr:
    """numerator / denominator, null where the denominator is 0 (no volume, a flat stablecoin)."""
    return pl.when(denominator > 0).then(numerator / denominator)


def out_of_sample(rows: pl.DataFrame, folds: list[Fold], n_estimators: int, seed: int) -> pl.DataFrame:
    """Fit on each fold's training bars (labelled rows only), predict its test bars."""
    predictions = []
    for fold in folds:
        train = rows.filter(
            pl.col("timestamp").is_between(fold.train_start, fold.train_end), pl.col("label").is_not_null()
        )
        test = rows.filter(pl.col("timestamp").is_between(fold.test_start, fold.test_end))
        model = lgb.LGBMClassifier(
            n_estimators=n_estimators,
            learning_rate=0.05,
            num_leaves=31,
            min_child_samples=200,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.8,
            n_jobs=1,
            random_state=seed,
            verbose=-1,
        )
        model.fit(train.select(FEATURES).to_numpy(), train.get_column("label").to_numpy())
        p_up = model.predict_proba(test.select(FEATURES).to_numpy())[:, 1]
        predictions.append(test.select("timestamp", "symbol", fold=pl.lit(fold.index), p_up=pl.Series(p_up)))
    return pl.concat(predictions)


def report(title: str, predictions: pl.DataFrame, panel: pl.DataFrame) -> None:
    interval = detect_interval(panel)
    print(f"\n{title}: {predictions.height:,} predictions")
    print(f"{'scheme':<16}{'rebalance':>10}{'fee bps':>9}{'gross SR':>10}{'net SR':>9}{'turnover':>10}{'hit':>7}")
    for scheme, every, fee in SETTINGS:
        cfg = EvalConfig(scheme=scheme, decide_every=every, fee_bps=fee)
        m = score_predictions(predictions, panel, cfg, bar_interval=interval)
        if not m.valid:
            print(f"{scheme:<16}{every:>10}{fee:>9.0f}  invalid: {m.reason} ({m.message})")
            continue
        print(
            f"{scheme:<16}{every:>10}{fee:>9.0f}{m.sharpe_gross:>10.2f}{m.sharpe_net:>9.2f}"
            f"{m.turnover:>10.3f}{m.hit_rate:>7.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL, help="OHLCV panel (Parquet or CSV).")
    parser.add_argument("--estimators", type=int, default=200, help="LightGBM trees per fold.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.perf_counter()
    panel = load_panel(args.panel)
    plan = plan_evaluation(timeline(panel), EvalConfig(horizon=1))
    rows = features_and_labels(panel)
    print(
        f"{args.panel.name}: {panel.height:,} rows, {panel.get_column('symbol').n_unique()} symbols; "
        f"reward window {plan.reward_start:%Y-%m-%d} → {plan.reward_end:%Y-%m-%d}, "
        f"{len(plan.folds)} folds testing from {plan.folds[0].test_start:%Y-%m-%d}; "
        f"holdout {plan.holdout_start:%Y-%m-%d} → {plan.holdout_end:%Y-%m-%d}"
    )

    reward_predictions = out_of_sample(rows, plan.folds, args.estimators, args.seed)
    report("reward window (walk-forward folds)", reward_predictions, reward_panel(panel, plan))
    holdout_predictions = out_of_sample(rows, [plan.holdout_fold], args.estimators, args.seed)
    report("holdout (trained on the whole reward window)", holdout_predictions, panel)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
