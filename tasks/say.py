"""What a run says to its user, a line at a time: in the flow run's logs (the Prefect UI, where nights are watched)
and in the terminal of `sharpe-rl run` (through `sharpe_rl.progress`, drawn by `RunProgress`)."""

from __future__ import annotations

from prefect import get_run_logger

from sharpe_rl import progress


def say(text: str) -> None:
    """Each line of `text` as an INFO line of the current flow or task run, and on the terminal."""
    logger = get_run_logger()
    for line in text.splitlines():
        logger.info(line)
        progress.said(line)
