"""The terminal progress of a run: one line per cycle with what a user checks first."""

from io import StringIO

from rich.console import Console

from sharpe_rl import progress
from sharpe_rl.progress import RunProgress, cycle_line


def test_the_cycle_line_shows_reward_sharpe_outcomes_and_the_kl_to_the_base_policy():
    out = StringIO()
    summary = {
        "experiments": 6.0,
        "ok_pct": 50.0,
        "failure_pct_syntax": 100 * 2 / 6,
        "failure_pct_missing_column": 100 / 6,
        "failure_pct_timeout": 0.0,
        "reward_mean": -0.5,
        "sharpe_median": -0.456,
        "sharpe_max": 1.234,
        "ppo_kl": 0.01234,
    }
    with RunProgress(Console(file=out, width=200)):
        progress.cycle_started("run-a", cycle=2, cycles=3, batch_size=6)
        progress.experiment_done(2, "syntax")
        progress.cycle_finished(2, summary)
        progress.said(cycle_line(2, summary))  # what the pipeline's log step says
    line = next(line for line in out.getvalue().splitlines() if line.startswith("cycle 2:"))
    assert line == (
        "cycle 2: reward mean -0.500, net Sharpe median -0.46, best 1.23; "
        "ran 3 of 6, failed 3 (syntax 2, missing_column 1); KL to base 0.012 nats"
    )


def test_a_policy_that_moved_a_little_reads_above_zero():
    # A fresh `make run` (the default learning rate, 3 cycles of 8) printed "KL to base 0.000 nats" every cycle.
    summary = {"experiments": 8.0, "ok_pct": 100.0, "reward_mean": -0.7}
    assert cycle_line(1, summary | {"ppo_kl": 0.00041}).endswith("KL to base 4.1e-04 nats")
    assert cycle_line(0, summary | {"ppo_kl": 0.0}).endswith("KL to base 0.000 nats")  # the base itself
    assert cycle_line(5, summary | {"ppo_kl": 1.2345}).endswith("KL to base 1.234 nats")


def test_the_cycle_line_says_how_many_executions_came_from_the_cache():
    summary = {"experiments": 4.0, "ok_pct": 100.0, "cached": 4.0, "reward_mean": 0.25, "ppo_kl": 0.0}
    assert cycle_line(0, summary) == (
        "cycle 0: reward mean +0.250; ran 4 of 4, failed 0; 4 executions from the cache; KL to base 0.000 nats"
    )


def test_with_family_credit_the_cycle_line_says_what_the_update_learned_from():
    summary = {"experiments": 4.0, "ok_pct": 100.0, "reward_mean": -0.7, "ppo_kl": 0.0}
    assert cycle_line(3, summary | {"credit_mean": -0.72}).startswith(
        "cycle 3: reward mean -0.700 (the update learns from family credit, mean -0.720); ran 4 of 4"
    )
    assert "credit" not in cycle_line(3, summary)


def test_a_job_in_stages_draws_one_bar_per_stage_and_no_cycles():
    """evaluate-policy: sampling (not counted), then the executions of each window, counted as they finish."""
    out = StringIO()
    with RunProgress(Console(file=out, width=200)):
        progress.stage_started("sampling base", None)
        progress.stage_started("executing on the reward window", 4)
        for _ in range(3):
            progress.step_done()
    drawn = out.getvalue()
    assert "executing on the reward window" in drawn and "3/4" in drawn
    assert "sampling base" not in drawn and "cycles" not in drawn  # a stage replaces the last; no cycle bar
