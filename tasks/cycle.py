"""The steps of a cycle as Prefect tasks: thin wrappers over `sharpe_rl.steps` and `sharpe_rl.policy.learner`.

Every input is a value the flow passes: the run, the policy ref, the run's history before the cycle
(read once per cycle by `read_history`) and the previous step's result. Progress is reported from
the values the steps return, and each cycle ends with its line in the flow run's logs
(`progress.cycle_line`: reward, median and best net Sharpe, ran/failed, cache, KL). Generation, scoring,
logging and the update run in the flow's process; the executions fan out over the flow's task
runner (`execute_batch`). Logging is retried on any error (the replay buffer write is idempotent,
and MLflow catches up through its outbox).
"""

from __future__ import annotations

import time
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import unmapped

from sharpe_rl import history as run_history
from sharpe_rl import progress
from sharpe_rl import steps as run_steps
from sharpe_rl.data.atomic import DiskFull
from sharpe_rl.history import History
from sharpe_rl.policy import learner
from sharpe_rl.policy.learner import Batch, PolicyRef, Update
from sharpe_rl.steps import Executions, Logged, RunRef, Scored
from tasks.execute import execute_experiment


@task(cache_policy=NONE, task_run_name="history (cycle {cycle})")
def read_history(run: RunRef, cycle: int) -> History:
    """What the cycle knows of the run's past: the replay buffer's cycles before it."""
    return run_history.read_history(run.config.runs_dir, run.name, cycle)


@task(cache_policy=NONE, task_run_name="generate (cycle {cycle})")
def generate_batch(run: RunRef, policy: PolicyRef, cycle: int, history: History) -> Batch:
    config = run.config
    progress.cycle_started(run.name, cycle, config.cycles, config.batch_size)
    prompts = run_steps.cycle_prompts(run, cycle, history)
    return learner.generate(policy, prompts, cycle=cycle, seed=run_steps.generation_seed(run, cycle))


def execute_batch(run: RunRef, batch: Batch) -> Executions:
    """Fan the batch out over the flow's task runner (its workers are the concurrency limit)."""
    started = time.perf_counter()
    completions = [generation.completion for generation in batch.generations]
    futures = execute_experiment.map(completions, unmapped(run.evaluation))
    for future in as_completed(futures):  # cached ones too, so progress counts every experiment
        progress.experiment_done(batch.cycle, future.result().status)
    return Executions(outcomes=[future.result() for future in futures], seconds=time.perf_counter() - started)


@task(cache_policy=NONE, task_run_name="score (cycle {batch.cycle})")
def score_batch(run: RunRef, batch: Batch, executions: Executions, history: History) -> Scored:
    return run_steps.score(run, batch, executions, history)


def is_worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Any failure of a log step but a full disk (waiting does not free it)."""
    try:
        state.result()
    except DiskFull:
        return False
    except Exception:
        return True
    return False


_logging_retries = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": is_worth_retrying,
}


@task(cache_policy=NONE, **_logging_retries, task_run_name="log (cycle {scored.cycle})")
def log_cycle(run: RunRef, batch: Batch, executions: Executions, scored: Scored, history: History) -> Logged:
    timings = {"generate": batch.seconds, "execute": executions.seconds, "score": scored.seconds}
    return run_steps.log(run, scored, timings, history)


@task(cache_policy=NONE, task_run_name="update (cycle {cycle})")
def update_policy(policy: PolicyRef, cycle: int, scored: Scored) -> Update:
    return learner.update(policy, cycle, scored.experiences, scored.learned)


@task(cache_policy=NONE, **_logging_retries)
def log_update(run: RunRef, update: Update, logged: Logged) -> dict[str, float]:
    """Log the update; the cycle's numbers, also drawn on the terminal (`progress.cycle_finished`)."""
    numbers = run_steps.log_update(run, update, logged)
    progress.cycle_finished(logged.cycle, numbers)
    return numbers
