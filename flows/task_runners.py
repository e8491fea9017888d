"""The task runner executions use, from a run's settings: local threads (default) or a Dask cluster."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sharpe_rl.config import TaskRunnerConfig


def task_runner(settings: TaskRunnerConfig, workers: int) -> TaskRunner:
    """`workers` threads here, or the Dask cluster at `settings.dask_address`."""
    if settings.kind == "dask":
        from prefect_dask import DaskTaskRunner  # imported only when used: it pulls in distributed

        return DaskTaskRunner(address=settings.dask_address)
    return ThreadPoolTaskRunner(max_workers=workers)
