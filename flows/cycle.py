"""One cycle: generate → execute → score → log → update, from the run's history before it (read once).

It returns the policy its update committed and the line that says what it did, which the run says in its own logs
(a cycle is a subflow: its own logs are on its own page in the Prefect UI, not on the night's).
"""

from __future__ import annotations

from typing import NamedTuple

from prefect import flow

from sharpe_rl import progress
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


class CycleDone(NamedTuple):
    policy: PolicyRef
    line: str  # `progress.cycle_line`: reward, median and best net Sharpe, ran/failed, cache, KL


@flow(name="cycle", flow_run_name="{run.name} cycle {index}")
def cycle(run: RunRef, policy: PolicyRef, index: int) -> CycleDone:
    """Run cycle `index` of `run` from `policy`; returns the policy its update committed and what the cycle did."""
    history = read_history(run, index)
    batch = generate_batch(run, policy, index, history)
    executions = execute_batch(run, batch)
    scored = score_batch(run, batch, executions, history)
    logged = log_cycle(run, batch, executions, scored, history)
    update = update_policy(policy, index, scored)
    numbers = log_update(run, update, logged)
    return CycleDone(update.policy, progress.cycle_line(index, numbers))
