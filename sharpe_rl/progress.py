"""A run's progress as log events, the terminal display that draws them, and the line that sums up a cycle.

The pipeline reports progress from the values its steps return (`cycle_started` with a batch,
`experiment_done` with each outcome as it arrives, `cycle_finished` with the cycle's logged
numbers) as records of the `sharpe_rl.progress` logger; a job that has stages rather than cycles
(evaluate-policy: sampling, then executions on each window) reports `stage_started` and `step_done`.
Anything that handles logs can follow a run: `RunProgress` draws bars in the terminal for
`sharpe-rl run` and `sharpe-rl evaluate-policy`. `cycle_line` is the one line a
cycle ends with, the same in the terminal and in the flow run's logs in the Prefect UI.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

events = logging.getLogger("sharpe_rl.progress")
events.setLevel(logging.INFO)
events.propagate = False  # a progress line is not a log message: only handlers attached here see it


def said(line: str) -> None:
    """A line the run says to its user (its start, each cycle's `cycle_line`, its end)."""
    events.info("%s", line, extra={"progress": ("said", {"line": line})})


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


def stage_started(what: str, total: int | None) -> None:
    """A stage of a job begins: `what` it does, in `total` steps (None: not counted, such as sampling a policy)."""
    events.info("%s", what, extra={"progress": ("stage_started", {"what": what, "total": total})})


def step_done() -> None:
    """One step of the current stage finished."""
    events.info("a step finished", extra={"progress": ("step_done", {})})


def cycle_line(cycle: int, summary: Mapping[str, float]) -> str:
    """What a cycle did, in one line: reward, the median and best net Sharpe of what ran, how many experiments ran
    and why the others failed, how many executions came from the cache, and the KL of the policy that wrote the batch
    to the base policy.

    The median net Sharpe is the figure to compare from cycle to cycle: the reward mean drifts down over a run even
    when the policy writes the same experiments, because the evidence reward subtracts the expected best of the
    run's trials, and that grows with every cycle.

    `summary` is the cycle's logged numbers (`steps.log_update`): `experiments`, `ok_pct`, `failure_pct_<class>`,
    `cached`, `reward_mean`, `sharpe_median`, `sharpe_max`, `ppo_kl`, and `credit_mean` when the update learns from
    family credit rather than the rewards (said beside the reward mean, so the line does not claim it learned from
    the reward).
    """
    experiments = int(summary.get("experiments", 0))

    def count(pct: float) -> int:
        return round(experiments * pct / 100)

    failures = {
        key.removeprefix("failure_pct_"): count(pct)
        for key, pct in summary.items()
        if key.startswith("failure_pct_") and count(pct)
    }
    failed = sum(failures.values())
    why = " (" + ", ".join(f"{name} {n}" for name, n in sorted(failures.items(), key=lambda i: -i[1])) + ")"
    sharpe = (
        f", net Sharpe median {summary['sharpe_median']:.2f}, best {summary['sharpe_max']:.2f}"
        if summary.get("sharpe_max") is not None and summary.get("sharpe_median") is not None
        else ""
    )
    cached = int(summary.get("cached") or 0)
    reused = f"; {cached} execution{'s' if cached > 1 else ''} from the cache" if cached else ""
    credit = (
        f" (the update learns from family credit, mean {summary['credit_mean']:+.3f})"
        if summary.get("credit_mean") is not None
        else ""
    )
    return (
        f"cycle {cycle}: reward mean {summary.get('reward_mean', float('nan')):+.3f}{credit}{sharpe}; "
        f"ran {count(summary.get('ok_pct', 0.0))} of {experiments}, failed {failed}{why if failed else ''}{reused}; "
        # The KL of the policy that wrote this batch to the base policy (PPOStats.kl: k3, never negative).
        f"KL to base {nats(summary.get('ppo_kl', 0.0))} nats"
    )


def nats(kl: float) -> str:
    """A KL for a person: 3 decimals, or 2 significant digits below 0.001, where a moving policy would read 0.000."""
    return f"{kl:.1e}" if 0 < abs(kl) < 0.001 else f"{kl:.3f}"


class RunProgress(logging.Handler):
    """Two bars (cycles, shown once a cycle starts; experiments of this cycle, or steps of a stage) and the lines the
    run says, while in its `with` block."""

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
        self._cycles = self.progress.add_task("cycles", total=None, visible=False)
        self._experiments = self.progress.add_task("experiments", total=None)

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
            self.progress.update(
                self._cycles,
                description=f"{values['run']}: cycles",
                total=values["cycles"],
                completed=values["cycle"],
                visible=True,
            )
            self.progress.update(
                self._experiments,
                description=f"cycle {values['cycle']}: generating",
                total=values["batch"],
                completed=0,
            )
        elif kind == "experiment_done":
            self.progress.update(self._experiments, description=f"cycle {values['cycle']}: executing", advance=1)
        elif kind == "cycle_finished":
            self.progress.update(self._cycles, completed=values["cycle"] + 1)
        elif kind == "stage_started":
            self.progress.update(self._experiments, description=values["what"], total=values["total"], completed=0)
        elif kind == "step_done":
            self.progress.update(self._experiments, advance=1)
        elif kind == "said":
            self.console.print(values["line"], soft_wrap=True, highlight=False, markup=False)
