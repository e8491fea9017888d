"""Report: the post-mortem of a finished (or running) run, posted as Prefect artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from sharpe_rl.analysis.report import build_report
from sharpe_rl.holdout import report_frame
from tasks.report import post_report


@task(cache_policy=NONE)
def write_report(runs_dir: Path, run: str | None, compare: str | None) -> str:
    frame = report_frame(runs_dir)
    report = build_report(
        frame, runs_dir / "reports" / (run or "latest"), run=run, compare_run=compare, runs_dir=runs_dir
    )
    post_report(report)
    return str(report.html_path)


@flow(name="report")
def report(run: str | None = None, compare: str | None = None, runs_dir: Path = Path("runs")) -> str:
    """Write the post-mortem of `run` (the latest when empty), optionally side by side with run `compare`."""
    return write_report(runs_dir, run, compare)
