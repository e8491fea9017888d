"""Reset: every run restarts from the base policy and the replay buffer is empty — all archived, nothing deleted."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.policy.checkpoint import Checkpoints


def reset_plan(runs_dir: Path) -> list[str]:
    """What `reset_runs` would archive, one line each (nothing is moved): every run's checkpoints, the replay
    buffer, the holdout scores, elite archives and policy evaluations."""
    plan = []
    checkpoints = runs_dir / "checkpoints"
    runs = sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.exists() else []
    for run in runs:
        cycle = Checkpoints(runs_dir, run).latest_cycle()
        done = "no cycle done yet" if cycle is None else f"{cycle + 1} cycle{'s' if cycle else ''} done"
        plan.append(f"the checkpoints of run {run} ({done})")
    frame = ReplayBuffer(runs_dir).frame()
    if not frame.is_empty():
        names = sorted(frame["run"].unique().to_list())
        plan.append(f"the replay buffer: {frame.height} experiences of {len(names)} run(s) ({', '.join(names)})")
    for folder, what in (
        ("holdout", "holdout scores"),
        ("elites", "elite archives"),
        ("evaluations", "policy evaluations"),
    ):
        if (runs_dir / folder).is_dir() and any((runs_dir / folder).iterdir()):
            plan.append(f"the {what} ({runs_dir / folder})")
    return plan


def reset_runs(runs_dir: Path) -> dict[str, str | None]:
    """Archive every run's checkpoints (adapter, value head, optimizer), the buffer, holdout scores, elites and
    policy evaluations."""
    archived: dict[str, str | None] = {}
    checkpoints = runs_dir / "checkpoints"
    runs = sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) if checkpoints.exists() else []
    for run in runs:
        where = Checkpoints(runs_dir, run).reset()
        archived[f"checkpoints of {run}"] = str(where) if where else None
    buffer = ReplayBuffer(runs_dir)
    had_experiences = not buffer.frame().is_empty()
    archived["replay buffer"] = str(buffer.clear()) if had_experiences else None
    # holdout scores and elites are keyed by (run, cycle, index): they belong to the experiences just archived
    archived["holdout scores"] = _archive_folder(runs_dir, "holdout")
    archived["elite archives"] = _archive_folder(runs_dir, "elites")
    archived["policy evaluations"] = _archive_folder(runs_dir, "evaluations")  # of the checkpoints just archived
    return archived


def _archive_folder(runs_dir: Path, name: str) -> str | None:
    """Move `runs_dir/<name>` to `runs_dir/<name>-archive/<timestamp>`; the destination, or None if there was none."""
    folder = runs_dir / name
    if not folder.is_dir():
        return None
    target = runs_dir / f"{name}-archive" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(folder, target)
    return str(target)
