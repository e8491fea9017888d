"""The steps of a cycle as Prefect tasks: thin wrappers over `RunSession` with retries.

Only infrastructure faults are retried (with backoff): a failing experiment is a result, never a
task failure. Executions are cached by the sandbox runner, on disk, by the content hash of what
they run (spec + data + harness + protocol + limits), so a repeated or resumed cycle reuses them
and starts no container. Prefect's own result cache is deliberately not used on top of it: a
second copy of the same cache, kept elsewhere (PREFECT_HOME), could outlive the first and hand
back results whose predictions are gone. Time limits are the sandbox's, not the task's.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import unmapped

from sharpe_rl.config import RunConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.generation import Generation
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.session import Outcome, open_session


def is_infrastructure_fault(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the sandbox itself failed (engine down, Docker API error)."""
    try:
        state.result()
    except InfrastructureError:
        return True
    except Exception:
        return False
    return False


@task(cache_policy=NONE)
def generate_batch(config: RunConfig, cycle: int) -> list[Generation]:
    return open_session(config).generate(cycle)


@task(
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=is_infrastructure_fault,
    cache_policy=NONE,
    task_run_name="execute (cycle {cycle})",
)
def execute_experiment(config: RunConfig, cycle: int, generation: Generation) -> Outcome:
    return open_session(config).execute(generation)


def execute_batch(config: RunConfig, cycle: int, generations: list[Generation]) -> list[Outcome]:
    """Fan the batch out over the flow's task runner (its worker count is the concurrency limit)."""
    session = open_session(config)
    futures = execute_experiment.map(unmapped(config), unmapped(cycle), generations)
    for future in as_completed(futures):  # cached ones too, so progress counts every experiment
        session.experiment_done(cycle, future.result())
    return [future.result() for future in futures]


@task(cache_policy=NONE)
def score_batch(
    config: RunConfig, cycle: int, generations: list[Generation], outcomes: list[Outcome]
) -> list[Experience]:
    return open_session(config).score(cycle, generations, outcomes)


@task(cache_policy=NONE, retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2))
def log_cycle(config: RunConfig, cycle: int, experiences: list[Experience]) -> dict[str, float]:
    return open_session(config).log(cycle, experiences)


@task(cache_policy=NONE)
def update_policy(config: RunConfig, cycle: int, experiences: list[Experience]) -> dict[str, float]:
    return open_session(config).update(cycle, experiences)
