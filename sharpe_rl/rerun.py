"""Re-execute past experiments from the replay buffer and say whether they reproduce.

A rerun uses the run's own saved settings and a fresh, empty cache, so the experiment really
runs again; the original result stays where it was. "Reproduces" means the same outcome (the
same error class, or ok), and for an ok experiment the same out-of-sample predictions (to a
float tolerance) and so the same net Sharpe.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import RunConfig
from sharpe_rl.evaluation import EvaluationRef, close_evaluation, evaluate, load_evaluation
from sharpe_rl.experience import Experience
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.steps import RunError, run_config_path

#: Largest difference of a probability between two runs that still counts as the same prediction.
PREDICTION_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Rerun:
    """One experiment run again, beside what it gave the first time."""

    run: str
    cycle: int
    index: int
    name: str | None
    original_status: str
    rerun_status: str
    original_sharpe: float | None
    rerun_sharpe: float | None
    max_prediction_diff: float | None
    reproduces: bool


def saved_config(runs_dir: Path, run: str) -> RunConfig:
    path = run_config_path(runs_dir, run)
    if not path.is_file():
        raise RunError(f"no run named {run!r} under {runs_dir} (its settings would be in {path})")
    return RunConfig.model_validate_json(path.read_text())


def rerun_experiments(
    runs_dir: Path, run: str, cycle: int, index: int | None = None, executor: str | None = None
) -> list[Rerun]:
    """Run cycle `cycle` of `run` again (or only experiment `index` of it) and compare with the buffer."""
    buffer = ReplayBuffer(runs_dir)
    cycles = buffer.cycles_done(run)
    if not cycles:
        raise RunError(f"the replay buffer under {runs_dir} has no run {run!r}")
    if cycle not in cycles:
        raise RunError(
            f"run {run} has no cycle {cycle} in the replay buffer: its cycles are {cycles[0]} to {cycles[-1]}"
        )
    experiences = buffer.experiences(run, cycle)
    if index is not None:
        experiences = [e for e in experiences if e.index == index]
    if not experiences:
        which = f"experiment {index} of cycle {cycle}" if index is not None else f"cycle {cycle}"
        raise RunError(f"the replay buffer has no {which} of run {run}")
    config = saved_config(runs_dir, run)
    sandbox = config.sandbox if executor is None else config.sandbox.model_copy(update={"executor": executor})
    original = EvaluationRef.for_run(config, runs_dir, run, sandbox=sandbox)
    with tempfile.TemporaryDirectory(prefix="sharpe-rl-rerun-") as scratch:
        fresh = original.model_copy(update={"cache_dir": Path(scratch), "run_id": f"{run}-rerun"})
        try:
            return [_rerun_one(e, original, fresh) for e in experiences]
        finally:
            close_evaluation(fresh)


def _rerun_one(experience: Experience, original: EvaluationRef, fresh: EvaluationRef) -> Rerun:
    before = experience.error_class.value if experience.error_class else "ok"
    sharpe_before = experience.metrics.get("sharpe_net")
    outcome = evaluate(experience.completion, fresh)
    after = outcome.status
    sharpe_after = outcome.metrics.sharpe_net if outcome.metrics is not None and outcome.ok else None
    diff = None
    if after == before == "ok" and outcome.result is not None:
        diff = _prediction_diff(original, experience, fresh, outcome.result)
    same = after == before and (diff is None or diff <= PREDICTION_TOLERANCE)
    return _row(experience, before, after, sharpe_before, sharpe_after, diff, reproduces=same)


def _prediction_diff(
    original: EvaluationRef, experience: Experience, fresh: EvaluationRef, result: ExecutionResult
) -> float | None:
    runner = load_evaluation(original).runner
    cached = runner.cached(experience.cache_key) if experience.cache_key else None
    if cached is None or not cached.ok:
        return None  # the original predictions are gone (cache cleared): compare the Sharpe only
    before = runner.predictions(cached)
    after = load_evaluation(fresh).runner.predictions(result)
    joined = before.join(after, on=["timestamp", "symbol", "fold"], how="full", suffix="_rerun", coalesce=True)
    a, b = joined.get_column("p_up").to_numpy(), joined.get_column("p_up_rerun").to_numpy()
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    return float(np.nan_to_num(diff, nan=1.0).max()) if len(diff) else 0.0


def _row(
    e: Experience,
    before: str,
    after: str,
    sharpe_before: float | None,
    sharpe_after: float | None,
    diff: float | None,
    *,
    reproduces: bool,
) -> Rerun:
    return Rerun(e.run, e.cycle, e.index, e.name, before, after, sharpe_before, sharpe_after, diff, reproduces)


def as_frame(reruns: list[Rerun]) -> pl.DataFrame:
    return pl.DataFrame([r.__dict__ for r in reruns])
