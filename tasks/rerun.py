"""A rerun as a Prefect task: a cycle of a run, or one of its experiments, executed again from the replay buffer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import task
from prefect.cache_policies import NONE

from sharpe_rl.rerun import Rerun, rerun_experiments


@task(cache_policy=NONE)
def run_again(
    runs_dir: Path, run: str, cycle: int, index: int | None, executor: Literal["docker", "process"] | None
) -> list[Rerun]:
    return rerun_experiments(runs_dir, run, cycle, index, executor)
