"""An RL run: the cycle repeated `config.cycles` times, resumable, with the post-mortem kept up to date."""

from __future__ import annotations

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.cycle import cycle
from sharpe_rl.config import RunConfig
from tasks.report import publish_report
from tasks.run import finish_run, pending_cycles, run_name_for_flow_run, start_run


@flow(name="rl_run", flow_run_name=run_name_for_flow_run)
def rl_run(config: RunConfig = RunConfig()) -> str:  # noqa: B008 - a pydantic default renders the UI form
    """Start (or resume) the run named in `config`, run its unfinished cycles, publish the post-mortem."""
    config = start_run(config)
    run_cycle = cycle.with_options(task_runner=ThreadPoolTaskRunner(max_workers=config.sandbox.workers))
    for index in pending_cycles(config):
        run_cycle(config, index)
        publish_report(config)
    publish_report(config, final=True)
    finish_run(config)
    return config.name
