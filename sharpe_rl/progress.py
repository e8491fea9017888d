"""A run's progress as log events, and the terminal display that draws them.

The pipeline reports progress from the values its steps return (`cycle_started` with a batch,
`experiment_done` with each outcome as it arrives, `cycle_finished` with the cycle's logged
numbers) as records of the `sharpe_rl.progress` logger. Anything that handles logs can follow a
run: `RunProgress` draws bars in the terminal for `sharpe-rl run`; a deployment can ship them to
Prefect with PREFECT_LOGGING_EXTRA_LOGGERS=sharpe_rl.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

events = logging.getLogger("sharpe_rl.progress")
events.setLevel(logging.INFO)
events.propagate = False  # a progress line is not a log message: only handlers attached here see it


def cycle_started(run: str, cycle: int, cycles: int, batch_size: int) -> None:
    events.info(
        "%s: cycle %d of %d, %d experiments",
        run,
        cycle,
        cycles,
        batch_size,
        extra={"progress": ("cycle_started", {"run": run, "cycle": cycle, "cycles": cycles, "batch": batch_size})},
    )


def experiment_done(cycle: int, status: str) -> None:
    events.info(
        "cycle %d: an experiment finished: %s",
        cycle,
        status,
        extra={"progress": ("experiment_done", {"cycle": cycle, "status": status})},
    )


def cycle_finished(cycle: int, summary: Mapping[str, float]) -> None:
    events.info(
        "cycle %d finished: reward mean %.3f",
        cycle,
        summary.get("reward_mean", float("nan")),
        extra={"progress": ("cycle_finished", {"cycle": cycle, "summary": dict(summary)})},
    )


class RunProgress(logging.Handler):
    """Two bars (cycles; experiments of this cycle) and one summary line per cycle, while in its `with` block."""

    def __init__(self, console: Console | None = None) -> None:
        super().__init__()
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._cycles = self.progress.add_task("cycles", total=None)
        self._experiments = self.progress.add_task("experiments", total=None)
        self._outcomes: Counter[str] = Counter()

    def __enter__(self) -> RunProgress:
        self.progress.start()
        events.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        events.removeHandler(self)
        self.progress.stop()

    def emit(self, record: logging.LogRecord) -> None:
        event: tuple[str, dict[str, Any]] | None = getattr(record, "progress", None)
        if event is None:
            return
        kind, values = event
        if kind == "cycle_started":
            self._outcomes.clear()
            self.progress.update(
                self._cycles, description=f"{values['run']}: cycles", total=values["cycles"], completed=values["cycle"]
            )
            self.progress.update(
                self._experiments,
                description=f"cycle {values['cycle']}: generating",
                total=values["batch"],
                completed=0,
            )
        elif kind == "experiment_done":
            self._outcomes[values["status"]] += 1
            self.progress.update(self._experiments, description=f"cycle {values['cycle']}: executing", advance=1)
        elif kind == "cycle_finished":
            cycle, summary = values["cycle"], values["summary"]
            self.progress.update(self._cycles, completed=cycle + 1)
            outcomes = ", ".join(f"{name} {count}" for name, count in self._outcomes.most_common())
            sharpe = f", best net Sharpe {summary['sharpe_max']:.2f}" if summary.get("sharpe_max") is not None else ""
            self.console.print(
                f"cycle {cycle}: reward mean {summary['reward_mean']:+.3f}{sharpe}; {outcomes}; "
                # The KL of the policy that wrote this batch to the base policy (PPOStats.kl: k3, never negative).
                f"KL to base {summary.get('ppo_kl', 0.0):.3f} nats",
                soft_wrap=True,
                highlight=False,
            )
