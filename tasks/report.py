"""Publishing the post-mortem where the user already looks: Prefect artifacts and the MLflow parent run."""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import Artifact, MarkdownArtifact, TableArtifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.runtime import flow_run

from sharpe_rl.analysis.report import Report, build_report
from sharpe_rl.holdout import report_frame
from sharpe_rl.steps import RunRef


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def post_report(report: Report) -> None:
    """Post a report as a markdown artifact (plots embedded) and one table artifact per table.

    Posting again from the same flow run updates those artifacts in place, so a run's Artifacts tab
    holds one current post-mortem rather than one per cycle (which the UI lists in no useful order).
    """
    artifacts: list[Artifact] = [
        MarkdownArtifact(
            key=artifact_key(report.run, "post-mortem"),
            markdown=report.markdown_with_embedded_plots(),
            description=f"Post-mortem of {report.run}",
        )
    ]
    artifacts += [
        TableArtifact(key=artifact_key(report.run, name), table=rows, description=f"{report.run}: {name}")
        for name, rows in report.tables.items()
        if rows
    ]
    mine = ArtifactFilter(
        key=ArtifactFilterKey(any_=[artifact.key for artifact in artifacts]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
    )
    with get_client(sync_client=True) as client:
        posted = {artifact.key: artifact.id for artifact in client.read_artifacts(artifact_filter=mine)}
        for artifact in artifacts:
            if artifact.key in posted:
                update = ArtifactUpdate(data=artifact.format(), description=artifact.description)
                client.update_artifact(posted[artifact.key], update)
            else:
                artifact.create()


@task(cache_policy=NONE)
def publish_report(run: RunRef) -> str:
    """Rebuild the run's post-mortem from the buffer (and holdout scores), post it, attach it to MLflow."""
    runs_dir = run.config.runs_dir
    out_dir = runs_dir / "reports" / run.name
    report = build_report(report_frame(runs_dir, run.name), out_dir, run=run.name, runs_dir=runs_dir)
    post_report(report)
    run.tracker().log_artifacts(out_dir, "report")
    return str(report.html_path)
