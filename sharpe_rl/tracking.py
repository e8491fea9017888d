"""MLflow logging: one parent run per RL run, one child run per experiment, per-cycle metrics.

Why child runs (and not only per-cycle tables): MLflow's run table searches and sorts child runs
by any metric or tag natively, so "the 20 best net Sharpes of last night" or "every
missing_column failure" is one click in the UI, and it stays fast at thousands of runs (a child
run is one `log_batch` plus a few small text artifacts). The parent run also gets each cycle's
experiences as one JSON table artifact, for bulk analysis.

Every write is idempotent, so a resumed run never duplicates anything: the parent run is found
again by its run name, a cycle's metrics are skipped when that step is already logged, and a
child run is keyed by (run, cycle, index) — a finished one is kept, a half-written one (the
process died while logging it) is deleted and written again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from sharpe_rl.config import RunConfig
from sharpe_rl.experience import Experience

EXPERIMENT_NAME = "sharpe-rl"
_TAG_RUN = "sharpe_rl.run"
_TAG_CYCLE = "sharpe_rl.cycle"
_TAG_KIND = "sharpe_rl.kind"
_MAX_TAG_CHARS = 4000


def default_tracking_uri(runs_dir: Path) -> str:
    """The embedded default: a SQLite file under `runs_dir`."""
    return f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: {"eval": {"horizon": 1}} -> {"eval.horizon": "1"}."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """Logs one RL run to MLflow. Create it once per run; every method is safe to call again."""

    def __init__(self, runs_dir: Path, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri(runs_dir)
        runs_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.tracking_uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            # An explicit artifact location: the embedded store keeps artifacts beside its database.
            location = (runs_dir / "mlartifacts").resolve().as_uri() if tracking_uri is None else None
            self.experiment_id = self.client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id
        self.parent_run_id: str | None = None

    # -- the parent run ---------------------------------------------------------------------

    def start(self, config: RunConfig, run: str, *, fresh: bool, artifacts: Mapping[str, Path] | None = None) -> str:
        """Find (to resume) or create the parent run of `run`; log its config and files such as the data card.

        `fresh` says the run starts from scratch (a new name, or a name whose state was reset): an
        MLflow parent run left under that name by the earlier incarnation is then marked archived,
        kept for history, and a new parent is created, so old cycles never mask new ones.
        """
        existing = self._search(f"tags.`{_TAG_RUN}` = '{run}' and tags.`{_TAG_KIND}` = 'parent'")
        if existing and not fresh:
            self.parent_run_id = existing[0].info.run_id
            self.client.update_run(self.parent_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return self.parent_run_id
        for old in existing:
            self.client.set_tag(old.info.run_id, _TAG_KIND, "archived-parent")
        parent = self.client.create_run(self.experiment_id, run_name=run, tags={_TAG_RUN: run, _TAG_KIND: "parent"})
        self.parent_run_id = parent.info.run_id
        params = flatten(config.model_dump(mode="json") | {"name": run})
        self.client.log_batch(self.parent_run_id, params=[Param(k, v) for k, v in params.items()])
        self.client.log_text(self.parent_run_id, config.model_dump_json(indent=2), "config.json")
        for folder, path in (artifacts or {}).items():
            if path.exists():
                self.client.log_artifact(self.parent_run_id, str(path), folder)
        return self.parent_run_id

    def finish(self, failed: bool = False) -> None:
        status = RunStatus.FAILED if failed else RunStatus.FINISHED
        self.client.set_terminated(self._parent(), status=RunStatus.to_string(status))

    @property
    def run_url_hint(self) -> str:
        return f"experiment {EXPERIMENT_NAME}, run id {self.parent_run_id} ({self.tracking_uri})"

    # -- per cycle --------------------------------------------------------------------------

    def log_cycle(self, cycle: int, metrics: Mapping[str, float], experiences: list[Experience]) -> None:
        """Log a cycle: its metrics at step=cycle, one child run per experience, and a table artifact."""
        self.log_metrics(cycle, metrics)
        self._log_children(cycle, experiences)
        table = [_table_row(e) for e in experiences]
        self.client.log_text(self._parent(), json.dumps(table, indent=1), f"cycles/cycle-{cycle:03d}.json")

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log metrics on the parent run at `step`, unless this set was already logged at that step."""
        parent = self._parent()
        if self._has_step(parent, step, next(iter(metrics), None)):
            return
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items() if value is not None]
        for start in range(0, len(batch), 900):  # MLflow caps a batch at 1000 metrics
            self.client.log_batch(parent, metrics=batch[start : start + 900])

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Attach a directory (the policy adapter of a cycle, the report) to the parent run."""
        self.client.log_artifacts(self._parent(), str(local_dir), artifact_path)

    def _log_children(self, cycle: int, experiences: list[Experience]) -> None:
        done: set[int] = set()
        query = f"tags.`mlflow.parentRunId` = '{self._parent()}' and tags.`{_TAG_CYCLE}` = '{cycle}'"
        for child in self._search(query):
            if child.info.status == RunStatus.to_string(RunStatus.FINISHED):
                done.add(int(child.data.tags["sharpe_rl.index"]))
            else:
                self.client.delete_run(child.info.run_id)
        for experience in experiences:
            if experience.index not in done:
                self._log_child(experience)

    def _log_child(self, e: Experience) -> None:
        status = e.error_class.value if e.error_class else "ok"
        tags = {
            "mlflow.parentRunId": self._parent(),
            _TAG_RUN: e.run,
            _TAG_CYCLE: str(e.cycle),
            _TAG_KIND: "experiment",
            "sharpe_rl.index": str(e.index),
            "status": status,
            "prompt_version": e.prompt_version,
            "model_family": e.model_family or "unparsed",
            "custom_features": str(e.custom_features),
            "code_hash": e.code_hash or "",
            "error": (e.error_message or "")[:_MAX_TAG_CHARS],
        }
        child = self.client.create_run(
            self.experiment_id, run_name=f"c{e.cycle:03d}-{e.index:02d} {e.name or status}"[:250], tags=tags
        )
        run_id = child.info.run_id
        now = int(time.time() * 1000)
        values = {"reward": e.reward} | dict(e.metrics) | {f"time_{k}": v for k, v in e.timings.items()}
        metrics = [Metric(k, float(v), now, e.cycle) for k, v in values.items() if v is not None]
        params = [Param("cycle", str(e.cycle)), Param("index", str(e.index))]
        self.client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("sharpe_rl.logged", "1")])
        if e.spec_json:
            spec = json.loads(e.spec_json)
            self.client.log_text(run_id, spec["features"], "features.py")
            self.client.log_text(run_id, spec["model"], "model.py")
            self.client.log_text(run_id, json.dumps(spec, indent=2), "spec.json")
        self.client.log_text(run_id, e.completion, "completion.txt")
        self.client.set_terminated(run_id)

    # -- helpers ----------------------------------------------------------------------------

    def _parent(self) -> str:
        if self.parent_run_id is None:
            raise RuntimeError("Tracker.start() must be called before logging")
        return self.parent_run_id

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _has_step(self, run_id: str, step: int, key: str | None) -> bool:
        if key is None:
            return True
        return any(m.step == step for m in self.client.get_metric_history(run_id, key))


def _table_row(e: Experience) -> dict[str, Any]:
    """An experience without the bulky generation fields (they live in the replay buffer)."""
    return e.model_dump(mode="json", exclude={"prompt", "prompt_token_ids", "completion_token_ids", "logprobs"})
