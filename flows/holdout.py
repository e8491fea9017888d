"""Holdout: the run's best experiments trained on the reward window and scored on the final holdout (reports only)."""

from __future__ import annotations

from prefect import flow
from prefect.utilities.annotations import unmapped

from sharpe_rl.steps import RunRef
from tasks.execute import execute_holdout
from tasks.run import holdout_candidates, save_holdout


@flow(name="holdout", flow_run_name="{run.name} holdout")
def holdout(run: RunRef, top_n: int = 10) -> int:
    """Score the `top_n` best distinct experiments of `run` on the holdout; returns how many were scored."""
    candidates = holdout_candidates(run, top_n)
    scores = execute_holdout.map([c.spec for c in candidates], unmapped(run.evaluation))
    return save_holdout(run, candidates, [score.result() for score in scores])
