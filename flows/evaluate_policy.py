"""Evaluate policy: the base policy and a run's final checkpoint, sampled alike, executed, compared with intervals."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows import task_runners
from sharpe_rl.config import TaskRunnerConfig
from sharpe_rl.evaluate_policy import EVALUATION_SEED, MIN_SAMPLES, ComparisonPlan
from tasks.evaluate_policy import compare_and_save, execute_samples, plan_comparison, sample_policy
from tasks.report import republish_report


@flow(name="evaluate_policy", flow_run_name="evaluate {run}")
def evaluate_policy(
    run: str,
    n: int = MIN_SAMPLES,
    seed: int = EVALUATION_SEED,
    runs_dir: Path = Path("runs"),
    task_runner: TaskRunnerConfig | None = None,
) -> list[dict]:
    """Compare `n` completions of the base policy and of `run`'s latest checkpoint on the reward window and holdout;
    the run's post-mortem is rebuilt with the verdict in its headline.

    The executions run where the run's ran (its threads or its Dask cluster), or where `task_runner` says.
    """
    plan = plan_comparison(runs_dir, run, n, seed)
    runner = task_runners.task_runner(task_runner or plan.task_runner, plan.evaluation.sandbox.workers)
    rows = compare_policies.with_options(task_runner=runner)(plan)
    republish_report(plan.runs_dir, plan.run, plan.tracking_uri)  # its headline now says trained against base
    return rows


@flow(name="compare_policies", flow_run_name="compare {plan.run} with its base")
def compare_policies(plan: ComparisonPlan) -> list[dict]:
    """Sample each policy, execute every completion on the reward window and those that ran on the holdout, compare.

    The samples are made here, not handed in: a subflow's arguments are stored as its flow run's parameters,
    which Prefect caps at 512 KB (2 x 256 completions are more).
    """
    completions = sample_policy(plan, "base") + sample_policy(plan, "final")
    outcomes, holdouts = execute_samples(plan, completions)
    return compare_and_save(plan, completions, outcomes, holdouts)
