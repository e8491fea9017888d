"""How fast the data layer and the host-side scoring are on a large real panel.

Loads `binance_spot_1h_2024.parquet` (755k rows, 136 symbols), plans the walk-forward folds,
then scores N random prediction sets covering every test bar of the folds (as an experiment's
out-of-sample predictions would) on the reward window, and prints each time.

    .venv/bin/python bench/scoring_speed.py [--panel PATH] [--n 1000] [--scheme cross_sectional]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import polars as pl

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.data.splits import plan_evaluation, reward_panel, timeline
from sharpe_rl.scoring import score_predictions

DEFAULT_PANEL = Path(__file__).resolve().parents[2] / "shared" / "data" / "binance_spot_1h_2024.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    parser.add_argument("--n", type=int, default=1000, help="Random prediction sets to score.")
    parser.add_argument("--scheme", choices=["cross_sectional", "per_asset"], default="cross_sectional")
    args = parser.parse_args()
    cfg = EvalConfig(scheme=args.scheme)

    started = time.perf_counter()
    panel = load_panel(args.panel)
    loaded = time.perf_counter()
    plan = plan_evaluation(timeline(panel), cfg)
    scored_panel = reward_panel(panel, plan)
    interval = detect_interval(panel)
    tests = pl.concat(
        scored_panel.filter(pl.col("timestamp").is_between(f.test_start, f.test_end)).select(
            "timestamp", "symbol", fold=pl.lit(f.index)
        )
        for f in plan.folds
    )
    planned = time.perf_counter()
    print(
        f"{args.panel.name}: {panel.height:,} rows, {panel['symbol'].n_unique()} symbols, interval {interval}; "
        f"{len(plan.folds)} folds, {tests.height:,} test rows per prediction set"
    )
    print(f"load + validate: {loaded - started:.2f} s; plan folds + cut reward window: {planned - loaded:.2f} s")

    rng = np.random.default_rng(0)
    seconds, valid = [], 0
    for _ in range(args.n):
        predictions = tests.with_columns(p_up=pl.Series(rng.random(tests.height)))
        t0 = time.perf_counter()
        metrics = score_predictions(predictions, scored_panel, cfg, bar_interval=interval)
        seconds.append(time.perf_counter() - t0)
        valid += metrics.valid
    total = sum(seconds)
    print(
        f"scored {args.n} random prediction sets ({args.scheme}, {valid} valid): {total:.1f} s in all, "
        f"median {statistics.median(seconds) * 1000:.0f} ms, max {max(seconds) * 1000:.0f} ms per set"
    )


if __name__ == "__main__":
    main()
