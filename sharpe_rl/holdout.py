"""Holdout evaluations: the final-holdout scores of a run's best experiments, kept beside the replay buffer.

They are written once a run ends (or when a report asks), never feed a reward, and are joined into
the buffer's frame as `metric_holdout_*` columns so the post-mortem can put in-sample and holdout
Sharpe side by side.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.data.atomic import atomic_path


def holdout_path(runs_dir: Path, run: str) -> Path:
    return runs_dir / "holdout" / f"{run}.parquet"


def write_holdout(runs_dir: Path, run: str, table: pl.DataFrame) -> Path:
    """Store a run's holdout table (one row per evaluated (run, cycle, index)), atomically."""
    path = holdout_path(runs_dir, run)
    with atomic_path(path) as temporary:
        table.write_parquet(temporary)
    return path


def report_frame(runs_dir: Path, run: str | None = None) -> pl.DataFrame:
    """The replay buffer's experiments with their holdout metrics (where evaluated) joined in."""
    frame = ReplayBuffer(runs_dir).frame(run=run)
    holdouts = [pl.read_parquet(p) for p in sorted((runs_dir / "holdout").glob("*.parquet"))]
    holdouts = [h for h in holdouts if not h.is_empty()]
    if frame.is_empty() or not holdouts:
        return frame
    holdout = pl.concat(holdouts, how="diagonal_relaxed")
    return frame.join(holdout, on=["run", "cycle", "index"], how="left")
