"""What a cycle knows of its run's past: the replay buffer's experiences of the cycles before it, as one value.

The flow reads it once per cycle (`read_history`) and hands it to the steps that count the past: the prompts'
elites (`steps.cycle_prompts`), the trials and visits a reward counts (`steps.score`), the archive and the
cycle's summary (`steps.log`). So a step's arguments name everything its result depends on, and a step runs
the same wherever it runs.

Only the cycles before `cycle` are in it, never rows of that cycle itself: a resumed cycle finds in the buffer
the rows its killed attempt wrote, and must compute exactly what that attempt did. The prompts, completions,
tokens and error messages are left out (the PPO update reads them from the batch, no step reads them from the
past), which keeps the value small: specs, outcomes and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from sharpe_rl.archive import EliteArchive
from sharpe_rl.buffer import ReplayBuffer, experiences_frame
from sharpe_rl.diversity import Visits
from sharpe_rl.experience import Experience

#: Buffer columns no step reads of the past: the texts and tokens the update trains on, and error messages.
UNREAD_COLUMNS = ("prompt", "completion", "prompt_token_ids", "completion_token_ids", "logprobs", "error_message")


@dataclass(frozen=True, eq=False)
class History:
    """Run `run`'s experiences of the cycles before `cycle`, as the buffer's frame shows them (`ReplayBuffer.frame`)
    without `UNREAD_COLUMNS`."""

    run: str
    cycle: int
    frame: pl.DataFrame

    def net_sharpes(self) -> list[float]:
        """The net Sharpe of every scored experiment: the trials a reward is deflated by."""
        if "metric_sharpe_net" not in self.frame.columns:
            return []
        scored = self.frame.filter(pl.col("error_class").is_null())
        return scored.get_column("metric_sharpe_net").drop_nulls().to_list()

    def visits(self) -> Visits:
        """The cells visited and the programs executed, for the diversity terms."""
        return Visits.from_frame(self.frame)

    def archive(self) -> EliteArchive:
        """The quality-diversity archive after the previous cycle (a new object each call: yours to add to)."""
        return EliteArchive.from_frame(self.frame, self.run)

    def through(self, experiences: Sequence[Experience]) -> pl.DataFrame:
        """The run's experiences up to and including this cycle's `experiences`, in the same columns."""
        now = experiences_frame(experiences).drop(UNREAD_COLUMNS)
        return pl.concat([self.frame, now], how="diagonal")


def read_history(runs_dir: Path, run: str, cycle: int) -> History:
    """The history cycle `cycle` of run `run` starts from: the buffer's rows of the cycles before it."""
    frame = ReplayBuffer(runs_dir).frame(run=run).filter(pl.col("cycle") < cycle).drop(UNREAD_COLUMNS)
    return History(run=run, cycle=cycle, frame=frame)
