"""Reset: every run restarts from the base policy and the replay buffer is empty — all archived, nothing deleted."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.policy.checkpoint import Checkpoints


def reset_runs(runs_dir: Path) -> dict[str, str | None]:
    """Archive every run's checkpoints (adapter, value head, optimizer), the replay buffer and holdout scores."""
    archived: dict[str, str | None] = {}
    checkpoints = runs_dir / "checkpoints"
    runs = sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.exists() else []
    for run in runs:
        where = Checkpoints(runs_dir, run).reset()
        archived[f"checkpoints of {run}"] = str(where) if where else None
    buffer = ReplayBuffer(runs_dir)
    had_experiences = not buffer.frame().is_empty()
    archived["replay buffer"] = str(buffer.clear()) if had_experiences else None
    # holdout scores are keyed by (run, cycle, index): they belong to the experiences just archived
    holdout = runs_dir / "holdout"
    archived["holdout scores"] = None
    if holdout.is_dir():
        target = runs_dir / "holdout-archive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(holdout, target)
        archived["holdout scores"] = str(target)
    return archived
