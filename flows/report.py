"""Report: the post-mortem of a finished (or running) run, posted as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from tasks.report import write_report


@flow(name="report")
def report(run: str | None = None, compare: str | None = None, runs_dir: Path = Path("runs")) -> str:
    """Write the post-mortem of `run` (the latest when empty), optionally side by side with run `compare`."""
    return write_report(runs_dir, run, compare)
