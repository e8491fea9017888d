"""The evaluation of a run's policy as Prefect tasks: plan, sample each policy, execute, compare and publish.

The executions are `tasks.execute`'s, fanned out over the flow's task runner like a cycle's. Each stage says
what it does in the flow run's logs and on the terminal, and advances a progress bar as executions finish:
at n = 256 the evaluation takes about an hour on a laptop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture, as_completed
from prefect.utilities.annotations import unmapped

from sharpe_rl import evaluate_policy as comparison
from sharpe_rl import progress
from sharpe_rl.evaluate_policy import ComparisonPlan, Which
from sharpe_rl.evaluation import Outcome
from sharpe_rl.policy import learner
from tasks.execute import execute_experiment, execute_holdout
from tasks.report import artifact_key
from tasks.say import say


@task(cache_policy=NONE)
def plan_comparison(runs_dir: Path, run: str, n: int, seed: int) -> ComparisonPlan:
    return comparison.plan_comparison(runs_dir, run, n, seed)


@task(cache_policy=NONE, task_run_name="sample {which} policy")
def sample_policy(plan: ComparisonPlan, which: Which) -> list[str]:
    policy = "the base policy" if which == "base" else f"run {plan.run} after cycle {plan.final.cycle}"
    say(f"sampling {plan.n} completions from {policy}")
    progress.stage_started(f"sampling {which}", None)
    return comparison.sample(plan, which)


def execute_samples(plan: ComparisonPlan, completions: list[str]) -> tuple[list[Outcome], list[dict[str, Any] | None]]:
    """Every completion on the reward window, then those that ran on the holdout (None for the others), fanned out
    over the flow's task runner."""
    say(f"executing {len(completions)} completions on the reward window")
    reward_window = execute_experiment.map(completions, unmapped(plan.evaluation))
    outcomes = [future.result() for future in _counted("reward window", reward_window)]
    futures = {i: execute_holdout.submit(o.spec, plan.evaluation) for i, o in enumerate(outcomes) if o.ok}
    say(f"{len(futures)} of {len(completions)} ran; executing them on the holdout")
    _counted("holdout", list(futures.values()))
    return outcomes, [futures[i].result() if i in futures else None for i in range(len(outcomes))]


def _counted(window: str, futures: list[PrefectFuture]) -> list[PrefectFuture]:
    """Wait for `futures`, a progress step as each finishes (cached ones too); returns them in their order."""
    progress.stage_started(f"executing on the {window}", len(futures))
    for _ in as_completed(futures):
        progress.step_done()
    return futures


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
