"""The terminal progress of a run: one line per cycle with what a user checks first."""

from io import StringIO

from rich.console import Console

from sharpe_rl import progress
from sharpe_rl.progress import RunProgress


def test_the_cycle_line_shows_reward_outcomes_and_the_kl_to_the_base_policy():
    out = StringIO()
    with RunProgress(Console(file=out, width=200)):
        progress.cycle_started("run-a", cycle=2, cycles=3, batch_size=2)
        progress.experiment_done(2, "syntax")
        progress.experiment_done(2, "syntax")
        progress.cycle_finished(2, {"reward_mean": -0.5, "sharpe_max": 1.234, "ppo_kl": 0.01234})
    line = next(line for line in out.getvalue().splitlines() if line.startswith("cycle 2:"))
    assert line == "cycle 2: reward mean -0.500, best net Sharpe 1.23; syntax 2; KL to base 0.012 nats"
