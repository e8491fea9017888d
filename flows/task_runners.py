"""The task runner a run's executions use, from its settings: local threads (default) or a Dask cluster."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from sharpe_rl.config import RunConfig


def task_runner(config: RunConfig) -> TaskRunner:
    """Threads (`sandbox.workers` of them), or the Dask cluster at `task_runner.dask_address`."""
    if config.task_runner.kind == "dask":
        from prefect_dask import DaskTaskRunner  # imported only when used: it pulls in distributed

        return DaskTaskRunner(address=config.task_runner.dask_address)
    return ThreadPoolTaskRunner(max_workers=config.sandbox.workers)
