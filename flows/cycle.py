"""One cycle: generate → execute → score → log → update, from the run's history before it (read once)."""

from __future__ import annotations

from prefect import flow

from sharpe_rl.policy.learner import PolicyRef
from sharpe_rl.steps import RunRef
from tasks.cycle import (
    execute_batch,
    generate_batch,
    log_cycle,
    log_update,
    read_history,
    score_batch,
    update_policy,
)


@flow(name="cycle", flow_run_name="{run.name} cycle {index}")
def cycle(run: RunRef, policy: PolicyRef, index: int) -> PolicyRef:
    """Run cycle `index` of `run` from `policy`; returns the policy its update committed."""
    history = read_history(run, index)
    batch = generate_batch(run, policy, index, history)
    executions = execute_batch(run, batch)
    scored = score_batch(run, batch, executions, history)
    logged = log_cycle(run, batch, executions, scored, history)
    update = update_policy(policy, index, scored)
    log_update(run, update, logged)
    return update.policy
