"""What a run's post-mortem states about its evaluation, kept beside its holdout scores.

Written when the run starts (the no-skill band, the policy's memory, the windows, whether the
prompt named the symbols) and completed when it ends (`Selection`: does the reward carry over).
The report reads it; MLflow gets the same numbers. Beside it, `load_comparison` reads what
`sharpe-rl evaluate-policy` measured of the run (its trained policy against its base), and
`load_comparison_sample` the completions it executed.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.data.atomic import write_bytes_atomic
from sharpe_rl.noskill import NoSkillBand
from sharpe_rl.selection import Selection


class RunFacts(BaseModel):
    """The evaluation facts of one run (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    noskill: NoSkillBand
    knowledge: str  # the policy's knowledge cutoff, in words
    cutoff: date | None
    memory: bool  # whether the policy may remember market history at all
    reward_start: datetime
    reward_end: datetime
    holdout_start: datetime | None
    holdout_end: datetime | None
    symbols_named: bool
    clock: str = ""  # the decisions, label and history, in words (`Clock.describe`)
    selection: Selection | None = None

    def holdout_words(self) -> str:
        """Where the holdout lies relative to what the policy may remember."""
        if self.holdout_start is None or self.holdout_end is None:
            return "no holdout (eval.holdout_fraction is 0)"
        span = f"{self.holdout_start:%Y-%m-%d} to {self.holdout_end:%Y-%m-%d}"
        if not self.memory:
            return f"{span}; {self.knowledge}"
        if self.cutoff is None:
            return f"{span}; the policy's {self.knowledge}: the holdout may lie inside what it remembers"
        if self.holdout_start.date() > self.cutoff:
            return f"{span}, after the policy's {self.knowledge}: nothing it remembers can pay there"
        return (
            f"{span}: the data has nothing after the policy's {self.knowledge}, so the holdout lies inside what it "
            "may remember, and memorised hindsight can pay there too"
        )


def facts_path(runs_dir: Path, run: str) -> Path:
    return runs_dir / "holdout" / f"{run}.facts.json"


def save_facts(runs_dir: Path, run: str, facts: RunFacts) -> None:
    write_bytes_atomic(facts_path(runs_dir, run), facts.model_dump_json(indent=2).encode())


def load_facts(runs_dir: Path, run: str) -> RunFacts | None:
    """The run's facts, None for a run from before they were kept."""
    path = facts_path(runs_dir, run)
    return RunFacts.model_validate_json(path.read_text()) if path.is_file() else None


def comparison_path(runs_dir: Path, run: str) -> Path:
    """Where `sharpe-rl evaluate-policy` keeps its comparison of a run's trained policy with its base."""
    if not run or Path(run).name != run or run.startswith("."):
        raise ValueError(f"run name {run!r} must be a plain file name")
    return Path(runs_dir) / "evaluations" / f"{run}.json"


def load_comparison(runs_dir: Path, run: str) -> dict[str, Any] | None:
    """The stored comparison of `run` (`sharpe_rl.evaluate_policy.save_comparison`'s document), or None."""
    path = comparison_path(runs_dir, run)
    return json.loads(path.read_text()) if path.is_file() else None


def load_comparison_sample(runs_dir: Path, run: str) -> pl.DataFrame | None:
    """The completions the stored comparison of `run` executed (one row each, both policies), or None."""
    path = comparison_path(runs_dir, run).with_suffix(".parquet")
    return pl.read_parquet(path) if path.is_file() else None
