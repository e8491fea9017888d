"""Tasks that open and close an RL run, and score its best experiments on the final holdout."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from sharpe_rl import steps as run_steps
from sharpe_rl.config import RunConfig
from sharpe_rl.steps import Candidate, RunRef


def run_name_for_flow_run() -> str:
    """The flow run's name: the run's own name, or a dated one for a new run."""
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, RunConfig) else (config or {}).get("name")
    return name or datetime.now().strftime("run-%Y%m%d-%H%M%S")


@task(cache_policy=NONE)
def start_run(config: RunConfig) -> RunRef:
    """Name the run (after its flow run when unnamed) and open it: settings, data, policy, tracking, resume point."""
    named = config if config.name else config.model_copy(update={"name": flow_run.name or run_name_for_flow_run()})
    run = run_steps.start(named)
    print(run.description)
    return run


@task(cache_policy=NONE)
def finish_run(run: RunRef, failed: bool = False) -> None:
    run_steps.finish(run, failed=failed)


@task(cache_policy=NONE)
def holdout_candidates(run: RunRef, top_n: int) -> list[Candidate]:
    return run_steps.holdout_candidates(run, top_n)


@task(cache_policy=NONE)
def save_holdout(run: RunRef, candidates: list[Candidate], scores: list[dict]) -> int:
    return run_steps.save_holdout(run, candidates, scores).height


@task(cache_policy=NONE)
def carry_over(run: RunRef) -> None:
    """Whether the run's reward carries over to its holdout (agreement, PBO): into its facts and MLflow."""
    selection = run_steps.carry_over(run)
    if selection.agreement is not None:
        print(f"reward–holdout agreement (Spearman): {selection.agreement.sentence()}")
    if selection.pbo is not None:
        print(f"probability of backtest overfitting: {selection.pbo:.2f} ({selection.pbo_experiments} experiments)")
