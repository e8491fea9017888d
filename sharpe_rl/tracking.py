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

A tracking server that is down never stops a run. Every write after `start` is first put in an
outbox on disk (`runs/tracking-outbox/`, one JSON file per write, written atomically), then
delivered in order; when the server does not answer, the files wait and go out with the next
write that finds it up (or the next `start` of the run). A write MLflow refuses as invalid is
moved to `tracking-outbox/rejected/` with the reason, and the writes after it go on. And one
experiment's record cannot make MLflow refuse a cycle: metric names must be plain identifiers,
values finite numbers, at most `MAX_CHILD_METRICS` of them, tag values are cut to size; anything
else is listed in the child's `sharpe_rl.invalid_values` tag instead of being logged.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from sharpe_rl.config import RunConfig
from sharpe_rl.data.atomic import DiskFull, write_bytes_atomic
from sharpe_rl.experience import Experience

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "sharpe-rl"
#: Where `sharpe-rl serve` shows the embedded store (SQLite under the runs directory): its MLflow UI.
LOCAL_UI_PORT = 5000
LOCAL_UI = f"http://127.0.0.1:{LOCAL_UI_PORT}"
#: MLflow's experiment tag for the kind of work an experiment holds: model training opens on its runs and
#: charts, where an experiment without it opens on the GenAI views (traces, evaluations).
_EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: MLflow's UI picks its GenAI or model-training view from the address's `workflowType`, else from what this
#: browser chose last, GenAI on a first visit (where the experiment's address opens on traces, not runs).
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
_TAG_RUN = "sharpe_rl.run"
_TAG_CYCLE = "sharpe_rl.cycle"
_TAG_KIND = "sharpe_rl.kind"
_TAG_INVALID = "sharpe_rl.invalid_values"
_MAX_TAG_CHARS = 4000
#: Metrics of one child run beyond this many are not logged (MLflow takes at most 1,000 per batch).
MAX_CHILD_METRICS = 100
#: The metric names logged: what the library itself produces. Anything else is recorded as invalid.
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
#: Error codes by which MLflow refuses a write for what it contains, or for a run it no longer has (deleted
#: for good, or an outbox left from another store): sending it again cannot help.
_INVALID_WRITE_CODES = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"}
)


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


def loggable_metrics(
    values: Mapping[Any, Any], limit: int = MAX_CHILD_METRICS
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """The values MLflow will take as metrics (in order, at most `limit`), and the names of the others by reason."""
    good: dict[str, float] = {}
    invalid: dict[str, list[str]] = {}
    for key, value in values.items():
        if value is None:
            continue
        if not isinstance(key, str) or not _METRIC_NAME.match(key):
            reason = "not a plain metric name"
        elif isinstance(value, bool) or not isinstance(value, int | float):
            reason = "not a number"
        elif not math.isfinite(value):
            reason = "not finite"
        elif len(good) >= limit:
            reason = f"over the limit of {limit} metrics"
        else:
            good[key] = float(value)
            continue
        invalid.setdefault(reason, []).append(repr(key)[:60])
    return good, invalid


def describe_invalid(invalid: Mapping[str, list[str]]) -> str:
    """`loggable_metrics`'s refusals in a line: how many, why, and the first few names."""
    total = sum(len(names) for names in invalid.values())
    parts = [
        f"{reason}: {len(names)} ({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        for reason, names in invalid.items()
    ]
    return f"{total} values not logged; " + "; ".join(parts)


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached when a run starts; the message says which one."""


class Tracker:
    """Logs one RL run to MLflow. `start` it once per run (or `attach` to a started one); every write is safe again."""

    def __init__(self, runs_dir: Path, tracking_uri: str | None = None, parent_run_id: str | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.tracking_uri)
        self.parent_run_id = parent_run_id
        self.outbox = self.runs_dir / "tracking-outbox"
        self._server = self.tracking_uri.startswith(("http://", "https://", "databricks"))
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                # A local store (SQLite, files) keeps artifacts under the runs directory, not in ./mlruns of
                # whatever directory the run was started from; a tracking server decides for itself.
                location = None if self._server else (self.runs_dir / "mlartifacts").resolve().as_uri()
                self._experiment_id = self.client.create_experiment(
                    EXPERIMENT_NAME, artifact_location=location, tags=dict([_EXPERIMENT_KIND])
                )
            else:
                self._experiment_id = experiment.experiment_id
                if experiment.tags.get(_EXPERIMENT_KIND[0]) != _EXPERIMENT_KIND[1]:  # made by an earlier version
                    self.client.set_experiment_tag(self._experiment_id, *_EXPERIMENT_KIND)
        return self._experiment_id

    # -- the parent run ---------------------------------------------------------------------

    def start(self, config: RunConfig, run: str, *, fresh: bool, artifacts: Mapping[str, Path] | None = None) -> str:
        """Find (to resume) or create the parent run of `run`; log its config and files such as the data card.

        `fresh` says the run starts from scratch (a new name, or a name whose state was reset): an
        MLflow parent run left under that name by the earlier incarnation is then marked archived,
        kept for history, and a new parent is created, so old cycles never mask new ones. Writes a
        previous attempt left in the outbox are delivered first. This one needs the server up.
        """
        if not self.reachable():
            raise TrackingUnavailable(
                f"the MLflow tracking server {self.tracking_uri} does not answer: start it, or drop "
                "--tracking-uri to log to the embedded store under the runs directory"
            )
        self.sync()
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

    def attach(self, run: str) -> str | None:
        """Log to the parent run `start` made for `run` (e.g. a later report of a finished run): its id, or None
        when this store has none. Its status is left as it is."""
        found = self._search(f"tags.`{_TAG_RUN}` = '{run}' and tags.`{_TAG_KIND}` = 'parent'")
        self.parent_run_id = found[0].info.run_id if found else None
        return self.parent_run_id

    def finish(self, failed: bool = False) -> None:
        """Mark the parent run FINISHED, or FAILED for a run that died (sent directly when the disk is full)."""
        status = RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED)
        try:
            self._write({"op": "terminate", "status": status})
        except DiskFull:
            self.client.set_terminated(self._parent(), status=status)

    @property
    def ui(self) -> str:
        """The MLflow UI that shows this store: the tracking server itself, or `sharpe-rl serve`'s for a local store."""
        return self.tracking_uri.rstrip("/") if self._server else LOCAL_UI

    @property
    def runs_url(self) -> str:
        """The experiment's runs in the MLflow UI, in its model-training view (a bare address may open GenAI)."""
        return f"{self.ui}/#/experiments/{self.experiment_id}/runs?{MODEL_TRAINING_VIEW}"

    @property
    def run_url(self) -> str:
        """The parent run's page in the MLflow UI, in its model-training view (its Runs link goes on in that view)."""
        return f"{self.ui}/#/experiments/{self.experiment_id}/runs/{self._parent()}?{MODEL_TRAINING_VIEW}"

    @property
    def run_address(self) -> str:
        """The parent run's page, and for a local store which UI shows it."""
        return self.run_url + ("" if self._server else " (the MLflow UI `sharpe-rl serve` starts)")

    # -- per cycle --------------------------------------------------------------------------

    def log_cycle(self, cycle: int, metrics: Mapping[str, float], experiences: list[Experience]) -> None:
        """Log a cycle: its metrics at step=cycle, one child run per experience, and a table artifact."""
        rows = [_table_row(e) for e in experiences]
        self._write({"op": "cycle", "cycle": cycle, "metrics": dict(metrics), "experiences": rows})

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log metrics on the parent run at `step`, unless this set was already logged at that step."""
        self._write({"op": "metrics", "step": step, "metrics": dict(metrics)})

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Attach a directory (the policy adapter of a cycle, the report) to the parent run."""
        self._write({"op": "artifacts", "local_dir": str(Path(local_dir).resolve()), "artifact_path": artifact_path})

    # -- the outbox -------------------------------------------------------------------------

    def reachable(self) -> bool:
        """Whether the tracking store answers now (a server's /health; the embedded store always does)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return True  # a local store (or one the client reaches by other means) is always there
        try:
            return requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=5).ok
        except requests.RequestException:
            return False

    def pending(self) -> list[Path]:
        """The writes waiting for the tracking server, oldest first."""
        return sorted(self.outbox.glob("*.json"))

    def sync(self) -> int:
        """Deliver the waiting writes in order while the server answers; returns how many still wait."""
        waiting = self.pending()
        if not waiting or not self.reachable():
            return len(waiting)
        for path in waiting:
            record = json.loads(path.read_text())
            try:
                self._deliver(record)
            except MlflowException as exc:
                if exc.error_code not in _INVALID_WRITE_CODES:
                    log.warning("MLflow at %s failed (%s); writes wait in %s", self.tracking_uri, exc, self.outbox)
                    return len(self.pending())
                self._reject(path, record, exc)
                continue
            except (requests.RequestException, OSError) as exc:
                log.warning("MLflow at %s is unreachable (%s); writes wait in %s", self.tracking_uri, exc, self.outbox)
                return len(self.pending())
            path.unlink()
        return len(self.pending())

    def _write(self, record: dict[str, Any]) -> None:
        record = {"parent": self._parent(), **record}
        name = f"{time.time_ns():020d}-{record['op']}.json"
        write_bytes_atomic(self.outbox / name, json.dumps(record).encode())
        self.sync()

    def _reject(self, path: Path, record: dict[str, Any], exc: Exception) -> None:
        log.error("MLflow refused a %s write (%s); it is kept in %s/rejected", record["op"], exc, self.outbox)
        record["rejected_because"] = str(exc)[:_MAX_TAG_CHARS]
        write_bytes_atomic(self.outbox / "rejected" / path.name, json.dumps(record).encode())
        path.unlink()

    def _deliver(self, record: dict[str, Any]) -> None:
        parent, op = record["parent"], record["op"]
        if op == "cycle":
            self._log_metrics(parent, record["cycle"], record["metrics"])
            self._log_children(parent, record["cycle"], record["experiences"])
            table = json.dumps(record["experiences"], indent=1)
            self.client.log_text(parent, table, f"cycles/cycle-{record['cycle']:03d}.json")
        elif op == "metrics":
            self._log_metrics(parent, record["step"], record["metrics"])
        elif op == "artifacts":
            if Path(record["local_dir"]).is_dir():  # a reset may have archived it meanwhile
                self.client.log_artifacts(parent, record["local_dir"], record["artifact_path"])
        elif op == "terminate":
            self.client.set_terminated(parent, status=record["status"])
        else:
            raise ValueError(f"unknown tracking write {op!r}")

    # -- MLflow calls -----------------------------------------------------------------------

    def _log_metrics(self, parent: str, step: int, metrics: Mapping[str, Any]) -> None:
        values, invalid = loggable_metrics(metrics, limit=900)
        if invalid:
            log.warning("step %d: %s", step, describe_invalid(invalid))
        if not values or self._has_step(parent, step, next(iter(values))):
            return
        now = int(time.time() * 1000)
        self.client.log_batch(parent, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def _log_children(self, parent: str, cycle: int, rows: list[dict[str, Any]]) -> None:
        done: set[int] = set()
        query = f"tags.`mlflow.parentRunId` = '{parent}' and tags.`{_TAG_CYCLE}` = '{cycle}'"
        for child in self._search(query):
            if child.info.status == RunStatus.to_string(RunStatus.FINISHED):
                done.add(int(child.data.tags["sharpe_rl.index"]))
            else:
                self.client.delete_run(child.info.run_id)
        for row in rows:
            if row["index"] not in done:
                self._log_child(parent, row)

    def _log_child(self, parent: str, e: dict[str, Any]) -> None:
        status = e["error_class"] or "ok"
        values = {"reward": e["reward"]} | e["metrics"] | {f"time_{k}": v for k, v in e["timings"].items()}
        metrics, invalid = loggable_metrics(values)
        tags = {
            "mlflow.parentRunId": parent,
            _TAG_RUN: e["run"],
            _TAG_CYCLE: str(e["cycle"]),
            _TAG_KIND: "experiment",
            "sharpe_rl.index": str(e["index"]),
            "status": status,
            "prompt_version": e["prompt_version"],
            "model_family": e["model_family"] or "unparsed",
            "custom_features": str(e["custom_features"]),
            "code_hash": e["code_hash"] or "",
            "error": (e["error_message"] or "")[:_MAX_TAG_CHARS],
            "cached": _cached_tag(e.get("cached")),
        }
        if invalid:
            tags[_TAG_INVALID] = describe_invalid(invalid)[:_MAX_TAG_CHARS]
        name = child_run_name(e["run"], e["cycle"], e["index"], e["name"] or status)
        child = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        run_id = child.info.run_id
        now = int(time.time() * 1000)
        params = [Param("cycle", str(e["cycle"])), Param("index", str(e["index"]))]
        batch = [Metric(k, v, now, e["cycle"]) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch, params=params, tags=[RunTag("sharpe_rl.logged", "1")])
        if e["spec_json"]:
            spec = json.loads(e["spec_json"])
            self.client.log_text(run_id, spec["features"], "features.py")
            self.client.log_text(run_id, spec["model"], "model.py")
            self.client.log_text(run_id, json.dumps(spec, indent=2), "spec.json")
        self.client.log_text(run_id, e["completion"], "completion.txt")
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

    def _has_step(self, run_id: str, step: int, key: str) -> bool:
        return any(m.step == step for m in self.client.get_metric_history(run_id, key))


def child_run_name(run: str, cycle: int, index: int, name: str) -> str:
    """An experiment's MLflow run name: its RL run, cycle and index, then its own name (`night-3 c002-05 lightgbm`),
    so that runs sorted across RL runs still say where each came from."""
    return " ".join(f"{run} c{cycle:03d}-{index:02d} {name}".split())[:250]


def _cached_tag(cached: bool | None) -> str:
    """The `cached` tag: whether the execution's result came from the cache, or that nothing was executed."""
    return "not executed" if cached is None else str(cached).lower()


def _table_row(e: Experience) -> dict[str, Any]:
    """An experience without the bulky generation fields (they live in the replay buffer)."""
    return e.model_dump(mode="json", exclude={"prompt", "prompt_token_ids", "completion_token_ids", "logprobs"})
