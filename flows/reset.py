"""Reset: back to the base policy with an empty replay buffer (both archived, nothing deleted)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from sharpe_rl.reset import reset_runs


@task(cache_policy=NONE)
def archive_state(runs_dir: Path) -> dict[str, str | None]:
    return reset_runs(runs_dir)


@flow(name="reset")
def reset(runs_dir: Path = Path("runs")) -> dict[str, str | None]:
    """Archive every run's checkpoints and the replay buffer: runs restart from the base policy."""
    archived = archive_state(runs_dir)
    for what, where in archived.items():
        print(f"{what}: {'archived to ' + where if where else 'nothing to archive'}")
    return archived
