"""Tasks that open and close an RL run, and score its best experiments on the final holdout.

What they find is said to the user (`tasks.say`): the run's start (settings, data, seed, the MLflow run's
address), whether the reward carries over, and its end (where the post-mortem is).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run
from pydantic import ValidationError

from sharpe_rl import steps as run_steps
from sharpe_rl.config import AdvancedSettings, RunConfig
from sharpe_rl.steps import Candidate, RunError, RunRef
from tasks.report import post_progress
from tasks.say import say


@task(cache_policy=NONE)
def start_run(
    cycles: int, batch_size: int, dataset: Path, prompt_version: str, seed: int | None, advanced: AdvancedSettings
) -> RunRef:
    """Open the run named after this flow run (settings, data, policy, tracking, resume point) and say so.

    Without a seed, a new run draws a fresh one (a resumed run keeps its own): `steps.choose_seed`.
    """
    name = flow_run.name
    seed, chosen = run_steps.choose_seed(advanced.runs_dir, name, seed)
    night = {"cycles": cycles, "batch_size": batch_size, "dataset": dataset, "prompt_version": prompt_version}
    try:
        config = RunConfig(name=name, seed=seed, **night, **dict(advanced))
    except ValidationError as exc:  # the Run Name typed in the form, most likely
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RunError(f"run {name!r} cannot start: {problems}") from None
    run = run_steps.start(config)
    say(run.description)
    if chosen == "fresh":
        say(f"seed {seed} is fresh: a run given seed {seed} and the same settings, data and policy repeats this one")
    post_progress(run)
    return run


@task(cache_policy=NONE)
def finish_run(run: RunRef, failed: bool = False) -> None:
    """Close the run (MLflow FINISHED or FAILED) and, when it finished, say where its post-mortem is."""
    run_steps.finish(run, failed=failed)
    if not failed:
        report = (run.config.runs_dir / "reports" / run.name / "report.html").resolve()
        say(
            f"run {run.name} finished: post-mortem {report} (or `sharpe-rl report {run.name}`); MLflow run "
            f"{run.mlflow_url} (its artifacts hold report/report.html)"
        )


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
        say(f"reward–holdout agreement (Spearman): {selection.agreement.sentence()}")
    if selection.pbo is not None:
        say(f"probability of backtest overfitting: {selection.pbo:.2f} ({selection.pbo_experiments} experiments)")
