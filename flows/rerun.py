"""Rerun: re-execute a past experiment, or a whole cycle, from the replay buffer and show whether it reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.report import artifact_key
from tasks.rerun import run_again


@flow(name="rerun", flow_run_name="rerun {run} cycle {cycle}")
def rerun(
    run: str,
    cycle: int,
    index: int | None = None,
    runs_dir: Path = Path("runs"),
    executor: Literal["docker", "process"] | None = None,
) -> list[dict]:
    """Execute cycle `cycle` of `run` (or only its experiment `index`) again; a table says what reproduced."""
    reruns = run_again(runs_dir, run, cycle, index, executor)
    rows = [r.__dict__ for r in reruns]
    create_table_artifact(rows, key=artifact_key(run, f"rerun-cycle-{cycle}"), description=f"{run} cycle {cycle} rerun")
    print(f"{sum(r.reproduces for r in reruns)} of {len(reruns)} experiments reproduced")
    return rows
