"""Reset asks first, saying what it would archive: on the command line, and in the Prefect UI (the reset flow
pauses for a confirmation; its test runs the flow in tests/test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli.app import app
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.experience import Experience
from sharpe_rl.reset import reset_plan


def some_state(runs: Path) -> None:
    """Two runs' checkpoints (one with two cycles done) and three experiences of one run in the buffer."""
    for run, cycles in (("night-1", 2), ("night-2", 0)):
        directory = runs / "checkpoints" / run
        directory.mkdir(parents=True)
        for cycle in range(cycles):
            (directory / f"cycle-{cycle:03d}").mkdir()
            (directory / f"cycle-{cycle:03d}" / "state.json").write_text(f'{{"cycle": {cycle}}}')
        if cycles:
            (directory / "latest").write_text(f"cycle-{cycles - 1:03d}")
    experiences = [
        Experience(
            run="night-1",
            cycle=0,
            index=i,
            prompt_version="v5_rules",
            prompt="p",
            completion="c",
            prompt_token_ids=[1],
            completion_token_ids=[2],
            logprobs=[-0.1],
            reward=0.0,
        )
        for i in range(3)
    ]
    ReplayBuffer(runs).write("night-1", 0, experiences)


def test_the_plan_lists_what_a_reset_would_archive_and_moves_nothing(tmp_path):
    runs = tmp_path / "runs"
    assert reset_plan(runs) == []
    some_state(runs)
    before = sorted(p.relative_to(runs) for p in runs.rglob("*"))
    assert reset_plan(runs) == [
        "the checkpoints of run night-1 (2 cycles done)",
        "the checkpoints of run night-2 (no cycle done yet)",
        "the replay buffer: 3 experiences of 1 run(s) (night-1)",
    ]
    assert sorted(p.relative_to(runs) for p in runs.rglob("*")) == before


def test_the_command_line_lists_what_it_would_archive_and_archives_nothing_unless_confirmed(tmp_path):
    runs = tmp_path / "runs"
    some_state(runs)
    declined = CliRunner().invoke(app, ["reset", "--runs-dir", str(runs)], input="n\n")
    assert declined.exit_code == 1
    assert "the checkpoints of run night-1 (2 cycles done)" in declined.stdout
    assert "error: aborted: nothing was changed" in declined.stderr
    assert (runs / "checkpoints" / "night-1").is_dir() and not ReplayBuffer(runs).frame().is_empty()

    confirmed = CliRunner().invoke(app, ["reset", "--runs-dir", str(runs)], input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert not (runs / "checkpoints" / "night-1").exists() and ReplayBuffer(runs).frame().is_empty()
    assert reset_plan(runs) == []
