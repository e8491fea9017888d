"""An RL run: the cycle repeated `config.cycles` times, resumable, with the post-mortem kept up to date."""

from __future__ import annotations

from prefect import flow

from flows.cycle import cycle
from flows.holdout import holdout
from flows.task_runners import task_runner
from sharpe_rl.config import RunConfig
from tasks.report import publish_report
from tasks.run import carry_over, finish_run, run_name_for_flow_run, start_run


@flow(name="rl_run", flow_run_name=run_name_for_flow_run)
def rl_run(config: RunConfig = RunConfig()) -> str:  # noqa: B008 - a pydantic default renders the UI form
    """Start (or resume) the run named in `config`, run its unfinished cycles, publish the post-mortem."""
    run = start_run(config)
    run_cycle = cycle.with_options(task_runner=task_runner(config.task_runner, config.sandbox.workers))
    score_holdout = holdout.with_options(task_runner=task_runner(config.task_runner, config.sandbox.workers))
    policy = run.policy
    try:
        for index in run.pending_cycles:
            policy = run_cycle(run, policy, index)
            publish_report(run)
        score_holdout(run)
        carry_over(run)
        publish_report(run)
    except BaseException:
        finish_run(run, failed=True)  # marked FAILED in MLflow, not left RUNNING
        raise
    finish_run(run)
    return run.name
