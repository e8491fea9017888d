"""The executions as Prefect tasks: on whatever task runner the flow uses (threads here, or Dask workers).

This module imports only the evaluation side of the library, so a Dask worker that runs these
tasks never loads the policy, torch, MLflow or the replay buffer. Only infrastructure faults are
retried (with backoff): a failing experiment is an Outcome, never a task failure. Executions are
cached by the sandbox runner, on disk, by the content hash of what they run (spec + data + harness
+ protocol + limits), so a repeated or resumed cycle reuses them and starts no container.
Prefect's own result cache is deliberately not used on top of it: a second copy of the same cache,
kept elsewhere (PREFECT_HOME), could outlive the first and hand back results whose predictions are
gone. Time limits are the sandbox's, not the task's.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from sharpe_rl.evaluation import EvaluationRef, Outcome, evaluate, evaluate_holdout
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.spec import ExperimentSpec


def is_infrastructure_fault(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when the sandbox itself failed (engine down or restarting, Docker API error)."""
    try:
        state.result()
    except InfrastructureError:
        return True
    except Exception:
        return False
    return False


_retried = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": is_infrastructure_fault,
    "cache_policy": NONE,
}


@task(**_retried, task_run_name="execute")
def execute_experiment(completion: str, evaluation: EvaluationRef) -> Outcome:
    return evaluate(completion, evaluation)


@task(**_retried, task_run_name="holdout {spec.name}")
def execute_holdout(spec: ExperimentSpec, evaluation: EvaluationRef) -> dict[str, Any]:
    return evaluate_holdout(spec, evaluation)
