"""Progress bars for an RL run in the terminal: cycles, the executions of the current cycle, a line per cycle."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sharpe_rl.session import Outcome


class RunProgress:
    """A `session.Listener` drawing two bars (cycles; experiments of this cycle) and one summary line per cycle."""

    def __init__(self, console: Console | None = None) -> None:
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
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def cycle_started(self, run: str, cycle: int, cycles: int, batch_size: int) -> None:
        self._outcomes.clear()
        self.progress.update(self._cycles, description=f"{run}: cycles", total=cycles, completed=cycle)
        self.progress.update(self._experiments, description=f"cycle {cycle}: generating", total=batch_size, completed=0)

    def experiment_done(self, cycle: int, outcome: Outcome) -> None:
        status = outcome.error_class or (outcome.result.status if outcome.result else "?")
        self._outcomes[str(status)] += 1
        self.progress.update(self._experiments, description=f"cycle {cycle}: executing", advance=1)

    def cycle_finished(self, cycle: int, summary: dict[str, float]) -> None:
        self.progress.update(self._cycles, completed=cycle + 1)
        outcomes = ", ".join(f"{name} {count}" for name, count in self._outcomes.most_common())
        sharpe = f", best net Sharpe {summary['sharpe_max']:.2f}" if "sharpe_max" in summary else ""
        self.console.print(
            f"cycle {cycle}: reward mean {summary['reward_mean']:+.3f}{sharpe}; {outcomes}; "
            # The KL of the policy that wrote this batch to the base policy (PPOStats.kl: k3, never negative).
            f"KL to base {summary.get('ppo_kl', 0.0):.3f} nats",
            soft_wrap=True,
            highlight=False,
        )
