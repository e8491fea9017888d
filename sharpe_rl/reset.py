"""Reset: every run restarts from the base policy and the replay buffer is empty — all archived, nothing deleted."""

from __future__ import annotations

from pathlib import Path

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.policy.checkpoint import Checkpoints


def reset_runs(runs_dir: Path) -> dict[str, str | None]:
    """Archive every run's checkpoints (adapter, value head, optimizer) and the replay buffer; say where."""
    archived: dict[str, str | None] = {}
    checkpoints = runs_dir / "checkpoints"
    runs = sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.exists() else []
    for run in runs:
        where = Checkpoints(runs_dir, run).reset()
        archived[f"checkpoints of {run}"] = str(where) if where else None
    buffer = ReplayBuffer(runs_dir)
    had_experiences = not buffer.frame().is_empty()
    archived["replay buffer"] = str(buffer.clear()) if had_experiences else None
    return archived
