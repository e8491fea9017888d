"""Publishing the post-mortem where the user already looks: Prefect artifacts and the MLflow parent run."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from sharpe_rl.analysis.report import Report, build_report
from sharpe_rl.holdout import report_frame
from sharpe_rl.steps import RunRef


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def post_report(report: Report) -> None:
    """Post a report as a markdown artifact and one table artifact per table (the same keys update in place)."""
    create_markdown_artifact(
        report.markdown, key=artifact_key(report.run, "post-mortem"), description=f"Post-mortem of {report.run}"
    )
    for name, rows in report.tables.items():
        if rows:
            create_table_artifact(rows, key=artifact_key(report.run, name), description=f"{report.run}: {name}")


@task(cache_policy=NONE)
def publish_report(run: RunRef) -> str:
    """Rebuild the run's post-mortem from the buffer (and holdout scores), post it, attach it to MLflow."""
    runs_dir = run.config.runs_dir
    out_dir = runs_dir / "reports" / run.name
    report = build_report(report_frame(runs_dir, run.name), out_dir, run=run.name)
    post_report(report)
    run.tracker().log_artifacts(out_dir, "report")
    return str(report.html_path)
