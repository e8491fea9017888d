"""The evaluation of a run's policy as Prefect tasks: plan, sample each policy, compare and publish.

The executions are `tasks.execute`'s, fanned out over the flow's task runner like a cycle's.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from sharpe_rl import evaluate_policy as comparison
from sharpe_rl.evaluate_policy import ComparisonPlan, Which
from sharpe_rl.evaluation import Outcome
from sharpe_rl.policy import learner
from tasks.report import artifact_key


@task(cache_policy=NONE)
def plan_comparison(runs_dir: Path, run: str, n: int, seed: int) -> ComparisonPlan:
    return comparison.plan_comparison(runs_dir, run, n, seed)


@task(cache_policy=NONE, task_run_name="sample {which} policy")
def sample_policy(plan: ComparisonPlan, which: Which) -> list[str]:
    return comparison.sample(plan, which)


@task(cache_policy=NONE)
def compare_and_save(
    plan: ComparisonPlan, completions: list[str], outcomes: list[Outcome], holdouts: list[dict | None]
) -> list[dict]:
    """The comparison table, stored beside the run and posted as a table artifact; the policy leaves memory."""
    learner.release(plan.run)
    samples = comparison.sample_frame(plan, completions, outcomes, holdouts)
    table = comparison.compare(samples)
    comparison.save_comparison(plan, samples, table)
    rows = table.to_dicts()
    description = f"{plan.run}: base policy vs checkpoint of cycle {plan.final.cycle}, {plan.n} completions each"
    create_table_artifact(rows, key=artifact_key(plan.run, "evaluate-policy"), description=description)
    return rows
