"""Tasks that open, pace and close an RL run."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from sharpe_rl.config import RunConfig
from sharpe_rl.session import open_session


def run_name_for_flow_run() -> str:
    """The flow run's name: the run's own name, or a dated one for a new run."""
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, RunConfig) else (config or {}).get("name")
    return name or datetime.now().strftime("run-%Y%m%d-%H%M%S")


@task(cache_policy=NONE)
def start_run(config: RunConfig) -> RunConfig:
    """Name the run (after its flow run when unnamed) and open it: data, sandbox, policy, tracking, resume point."""
    named = config if config.name else config.model_copy(update={"name": flow_run.name or run_name_for_flow_run()})
    session = open_session(named)
    print(session.describe())
    return named


@task(cache_policy=NONE)
def pending_cycles(config: RunConfig) -> list[int]:
    """The cycles still to run: from the first one without a checkpoint."""
    return open_session(config).pending_cycles()


@task(cache_policy=NONE)
def finish_run(config: RunConfig) -> None:
    open_session(config).finish()
