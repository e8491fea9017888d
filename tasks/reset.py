"""A reset as Prefect tasks: what it would archive (every run's checkpoints, the replay buffer, the holdout scores,
elite archives and policy evaluations), then archiving it; `flows/reset.py` asks in between."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from sharpe_rl.reset import reset_plan, reset_runs


@task(cache_policy=NONE)
def plan_reset(runs_dir: Path) -> list[str]:
    return reset_plan(runs_dir)


@task(cache_policy=NONE)
def archive_state(runs_dir: Path) -> dict[str, str | None]:
    return reset_runs(runs_dir)
