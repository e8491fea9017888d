"""One cycle: generate → execute → score → log → update."""

from __future__ import annotations

from prefect import flow

from sharpe_rl.config import RunConfig
from tasks.steps import execute_batch, generate_batch, log_cycle, score_batch, update_policy


@flow(name="cycle", flow_run_name="{config.name} cycle {index}")
def cycle(config: RunConfig, index: int) -> dict[str, float]:
    """Run cycle `index` of the run named in `config`; returns the policy update's stats."""
    generations = generate_batch(config, index)
    outcomes = execute_batch(config, index, generations)
    experiences = score_batch(config, index, generations, outcomes)
    log_cycle(config, index, experiences)
    return update_policy(config, index, experiences)
