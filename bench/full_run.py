"""A whole night, timed: `sharpe-rl run` for N cycles x B experiments, as a user starts it, from nothing cached.

Starts the CLI in a fresh runs directory (so no execution comes from an earlier cache, and Prefect
and MLflow start empty), times the whole command, then reads back what the run logged: the time of
each phase per cycle (MLflow's `time_*` metrics of the run's parent) and the experiments the replay
buffer holds. Prints the wall time, experiments per minute (and distinct executions per minute:
identical code runs once), each phase's total, mean per cycle and share of the run, and per block
of 6 cycles the share of experiments that ran and the mean reward (does the learning forget?).

    .venv/bin/python bench/full_run.py [--cycles 48] [--batch-size 16] [--data data/sample_daily.parquet]
        [--policy runs/policy/tiny] [--executor docker] [--runs-dir DIR] [--keep] [--last-days N]

A night takes an hour or more: run it from a detached worktree of the commit under test (`git
worktree add --detach ../night HEAD`, then `PYTHONPATH=../night` with the venv's Python), so that
changes to the checkout meanwhile (a merge, an edit of the harness) do not change the code it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PHASES = ("generate", "execute", "score", "log", "update")
BLOCK = 6  # cycles per block of the learning table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--policy", type=Path, default=Path("runs/policy/tiny"))
    parser.add_argument("--executor", default="docker")
    parser.add_argument("--runs-dir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the runs directory (its path is printed)")
    parser.add_argument("--last-days", type=int, default=None, help="run on the panel's last N days only")
    args = parser.parse_args()

    runs = args.runs_dir or Path(tempfile.mkdtemp(prefix="sharpe-rl-full-run-"))
    name = f"full-run-{args.cycles}x{args.batch_size}"
    if args.last_days:
        args.data = last_days(args.data, args.last_days, runs)
    command = [
        sys.executable, "-m", "cli", "run",
        "--cycles", str(args.cycles), "--batch-size", str(args.batch_size),
        "--data", str(args.data.resolve()), "--policy", str(args.policy.resolve()),
        "--executor", args.executor, "--name", name, "--runs-dir", str(runs),
    ]  # fmt: skip
    print(f"{' '.join(command[2:])}\nload average before: {os.getloadavg()[0]:.1f}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    load = os.getloadavg()
    try:
        report(runs, name, wall, args.cycles * args.batch_size)
        print(f"load average after: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min), {load[2]:.1f} (15 min)")
    finally:
        if args.keep:
            print(f"runs directory kept: {runs}")
        elif args.runs_dir is None:
            shutil.rmtree(runs, ignore_errors=True)


def last_days(data: Path, days: int, runs: Path) -> Path:
    """The panel's last `days` days, written beside the runs."""
    import polars as pl

    from sharpe_rl.data.panel import load_panel

    panel = load_panel(data)
    cut = panel.filter(pl.col("timestamp") > pl.col("timestamp").max() - pl.duration(days=days))
    path = runs / f"{data.stem}-last-{days}d.parquet"
    runs.mkdir(parents=True, exist_ok=True)
    cut.write_parquet(path)
    return path


def report(runs: Path, name: str, wall: float, experiments: int) -> None:
    import polars as pl
    from mlflow.tracking import MlflowClient

    from sharpe_rl.buffer import ReplayBuffer
    from sharpe_rl.facts import load_facts
    from sharpe_rl.tracking import EXPERIMENT_NAME, default_tracking_uri

    frame = ReplayBuffer(runs).frame(run=name)
    distinct = frame.get_column("cache_key").drop_nulls().n_unique()
    client = MlflowClient(tracking_uri=default_tracking_uri(runs))
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    parents = f"tags.`sharpe_rl.run` = '{name}' and tags.`sharpe_rl.kind` = 'parent'"
    parent = client.search_runs([experiment.experiment_id], filter_string=parents)[0]
    print(f"\n{name}: {wall / 60:.1f} min wall for {frame.height} experiments ({experiments} asked)")
    per_minute = frame.height / wall * 60
    print(f"  {per_minute:.1f} experiments per minute, {distinct / wall * 60:.1f} distinct executions per minute")
    print(f"  {'phase':<9} {'total (s)':>10} {'per cycle (s)':>14} {'share':>7}")
    for phase in PHASES:
        values = [m.value for m in client.get_metric_history(parent.info.run_id, f"time_{phase}")]
        total = sum(values)
        mean = statistics.fmean(values) if values else 0.0
        print(f"  {phase:<9} {total:10.1f} {mean:14.2f} {total / wall:7.1%}")
    blocks = (
        frame.with_columns((pl.col("cycle") // BLOCK).alias("block"), pl.col("error_class").is_null().alias("ran"))
        .group_by("block")
        .agg(
            pl.col("cycle").min().alias("first"),
            pl.col("cycle").max().alias("last"),
            pl.len(),
            pl.col("ran").mean(),
            pl.col("reward").mean(),
        )
        .sort("block")
    )
    print(f"\n  {'cycles':<9} {'experiments':>11} {'ran':>6} {'mean reward':>12}")
    for row in blocks.iter_rows(named=True):
        print(f"  {row['first']:>3}-{row['last']:<5} {row['len']:11d} {row['ran']:6.1%} {row['reward']:+12.3f}")
    facts = load_facts(runs, name)
    if facts is not None:
        print(f"\n  {facts.clock}\n  {facts.noskill.sentence()} (noise {facts.noskill.sigma:.2f})")
        print(f"  holdout: {facts.holdout_words()}")
        selection = facts.selection
        if selection is not None and selection.agreement is not None:
            print(f"  reward–holdout agreement (Spearman): {selection.agreement.sentence()}")
        if selection is not None and selection.pbo is not None:
            print(
                f"  probability of backtest overfitting: {selection.pbo:.2f} ({selection.pbo_experiments} experiments)"
            )


if __name__ == "__main__":
    main()
