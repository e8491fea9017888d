"""Publishing what a run shows where the user already looks: Prefect artifacts (the post-mortem with a link to the
MLflow run, its tables, the cycles done) and the MLflow parent run (the report's files), during the run
(`publish_report`) and again once `evaluate-policy` has measured its policy (`republish_report`); and the
post-mortem the report flow writes on request (`write_report`).

The artifacts are a view of files the run keeps anyway (the buffer, the report under `runs/reports/`), rebuilt
whole each time: when the Prefect API does not answer, a post is skipped with a warning and the next one (a
cycle later) brings the view up to date. A night never waits on, or fails for, its view.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prefect import get_run_logger, task
from prefect.artifacts import Artifact, MarkdownArtifact, ProgressArtifact, TableArtifact
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.runtime import flow_run

from sharpe_rl.analysis.report import Report, build_report
from sharpe_rl.holdout import report_frame
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.steps import RunRef
from sharpe_rl.tracking import Tracker


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def post_report(report: Report, mlflow_url: str | None = None) -> None:
    """Post a report as a markdown artifact (plots embedded, the MLflow run linked) and one table artifact per table.

    Posting again from the same flow run updates those artifacts in place, so a run's Artifacts tab
    holds one current post-mortem rather than one per cycle (which the UI lists in no useful order).
    """
    link = f"MLflow: [the run {report.run}, its experiments and this report]({mlflow_url})\n\n" if mlflow_url else ""
    artifacts: list[Artifact] = [
        MarkdownArtifact(
            key=artifact_key(report.run, "post-mortem"),
            markdown=link + report.markdown_with_embedded_plots(),
            description=f"Post-mortem of {report.run}",
        )
    ]
    artifacts += [
        TableArtifact(key=artifact_key(report.run, name), table=rows, description=f"{report.run}: {name}")
        for name, rows in report.tables.items()
        if rows
    ]
    _post(artifacts, "the post-mortem")


def post_progress(run: RunRef) -> None:
    """A progress artifact of the flow run: the share of the run's cycles done (committed by their checkpoint)."""
    last = Checkpoints(run.config.runs_dir, run.name).latest_cycle()
    done = 0 if last is None else last + 1  # cycles run in order: a cycle's checkpoint follows its predecessors'
    total = run.config.cycles
    progress = ProgressArtifact(
        key=artifact_key(run.name, "progress"),
        progress=min(100.0, 100 * done / total),
        description=f"{run.name}: {done} of {total} cycles done",
    )
    _post([progress], "the progress")


def _post(artifacts: list[Artifact], what: str) -> None:
    """Create the artifacts of this flow run, or update those it already posted under the same keys."""
    mine = ArtifactFilter(
        key=ArtifactFilterKey(any_=[artifact.key for artifact in artifacts]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
    )
    try:
        with get_client(sync_client=True) as client:
            posted = {artifact.key: artifact.id for artifact in client.read_artifacts(artifact_filter=mine)}
            for artifact in artifacts:
                if artifact.key in posted:
                    update = ArtifactUpdate(data=artifact.format(), description=artifact.description)
                    client.update_artifact(posted[artifact.key], update)
                else:
                    artifact.create()
    except httpx.HTTPError as exc:  # the API is away (a server restart): the next post catches up
        get_run_logger().warning("the Prefect API did not answer (%s): %s is updated with the next cycle", exc, what)


def rebuilt_report(runs_dir: Path, run: str) -> Report:
    """The run's post-mortem under `runs_dir/reports/<run>/`, rebuilt from the buffer, its holdout scores and
    what `evaluate-policy` measured of it."""
    return build_report(report_frame(runs_dir, run), runs_dir / "reports" / run, run=run, runs_dir=runs_dir)


@task(cache_policy=NONE)
def publish_report(run: RunRef) -> str:
    """Rebuild the run's post-mortem, post it and the cycles done, attach it to MLflow; returns the HTML report's
    path."""
    report = rebuilt_report(run.config.runs_dir, run.name)
    post_report(report, run.mlflow_url)
    post_progress(run)
    run.tracker().log_artifacts(report.markdown_path.parent, "report")
    return str(report.html_path)


@task(cache_policy=NONE)
def republish_report(runs_dir: Path, run: str, tracking_uri: str | None) -> str:
    """Rebuild a run's post-mortem after something was measured of it later (`evaluate-policy`'s verdict goes in
    its headline), post it, and attach it again to the run's MLflow parent run, where the user reads it; returns
    the HTML report's path. Without that parent run (the store moved, or the server is down) the files under
    `runs_dir/reports/` and the artifact are updated, with a warning."""
    report = rebuilt_report(runs_dir, run)
    tracker = Tracker(runs_dir, tracking_uri)
    if tracker.reachable() and tracker.attach(run) is not None:
        post_report(report, tracker.run_url)
        tracker.log_artifacts(report.markdown_path.parent, "report")
    else:
        post_report(report)
        get_run_logger().warning(
            "MLflow at %s does not answer, or has no run %s: its post-mortem is updated in %s only",
            tracker.tracking_uri,
            run,
            report.html_path,
        )
    return str(report.html_path)


@task(cache_policy=NONE)
def write_report(runs_dir: Path, run: str | None, compare: str | None) -> str:
    """Build the post-mortem of `run` (the latest when None), beside run `compare` when given, and post it; returns
    the HTML report's path."""
    frame = report_frame(runs_dir)
    report = build_report(
        frame, runs_dir / "reports" / (run or "latest"), run=run, compare_run=compare, runs_dir=runs_dir
    )
    post_report(report)
    return str(report.html_path)
