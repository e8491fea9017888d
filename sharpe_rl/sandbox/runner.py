"""SandboxRunner: the one entry point that runs generated experiments, checks them and caches results.

`run(spec)` executes the walk-forward folds of the reward window in the sandbox (a view of the
data that ends at `plan.reward_end`), validates what comes back on the host, then runs the
lookahead guard; `run_many` does the same for a batch on N workers; `run_holdout` trains on the
reward window and predicts the holdout, for reports only (never for rewards).

Host-side checks, none of which trusts the sandbox:
- The result is the last RESULT_MARKER line of the capped stdout, validated strictly; a missing,
  truncated or malformed one is `bad_predictions` (or `timeout`/`out_of_memory` when the host saw
  the process killed for that). The predictions must cover exactly the test rows of the view
  (each (timestamp, symbol, fold) once), lie in [0, 1] or be NaN, not all be NaN, not be constant.
  The report carries predictions only; scoring happens elsewhere on the host.
- Lookahead guard: the last fold runs again in a fresh sandbox on data physically cut at
  `plan.lookahead_cut`; if any prediction at or before the cut differs by more than
  LOOKAHEAD_TOLERANCE (or the re-run fails), the experiment is `lookahead`. This catches code that
  uses the future the same way in every run (shift(-1), centred windows, full-sample statistics,
  globals stashed by make_features). Code written to tell the two runs apart (the re-run has one
  fold, and its data ends at its test window's end) can evade it; the guard is a tripwire for the
  policy's habits, not a proof.

Cache: a result is stored under `cache_dir/results/<key>.json` (predictions beside it as Parquet)
where the key hashes everything that can change the outcome: the code, the data view, the folds,
horizon and seed, the harness and image, the executor and its limits, and the lookahead setup.
An identical experiment never runs twice, across processes too (a file lock per key).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import ValidationError

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.atomic import atomic_path, write_bytes_atomic
from sharpe_rl.data.splits import EvalPlan, Fold, plan_evaluation, timeline
from sharpe_rl.sandbox.contract import ErrorClass, bad_predictions_reason
from sharpe_rl.sandbox.docker_executor import DockerExecutor
from sharpe_rl.sandbox.executor import Executor, RawOutcome, host_time_limit
from sharpe_rl.sandbox.image import harness_hash
from sharpe_rl.sandbox.process_executor import ProcessExecutor
from sharpe_rl.sandbox.result import ExecutionResult, ReportError, decode_predictions, read_report
from sharpe_rl.sandbox.views import DataView, write_view
from sharpe_rl.spec import ExperimentSpec

#: Largest change of a probability that still counts as "the same" in the lookahead guard. Runs use the
#: same seeds and one thread, but a float32 model (torch) predicting fewer rows takes other BLAS code
#: paths and may move p_up by an ulp (6e-8 near 0.5); reading the future moves it by orders more.
LOOKAHEAD_TOLERANCE = 1e-6


def make_executor(config: SandboxConfig, run_id: str) -> Executor:
    """The executor `config.executor` names (Docker raises InfrastructureError without an engine/image)."""
    if config.executor == "docker":
        return DockerExecutor(config, run_id)
    return ProcessExecutor(config)


@dataclass(frozen=True)
class _Job:
    """One experiment on one view: which folds to run, and the lookahead re-run (view, fold) if any."""

    spec: ExperimentSpec
    view: DataView
    folds: list[Fold]
    lookahead: tuple[DataView, Fold] | None


@dataclass
class _Attempt:
    """One sandbox run, interpreted on the host."""

    status: str
    message: str = ""
    traceback: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    exit_code: int | None = None
    stderr_tail: str = ""
    predictions: pl.DataFrame | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class SandboxRunner:
    """Runs ExperimentSpecs on one panel under one evaluation protocol; see the module docstring."""

    def __init__(
        self,
        panel: pl.DataFrame,
        eval_cfg: EvalConfig,
        sandbox_cfg: SandboxConfig,
        cache_dir: Path,
        *,
        seed: int = 0,
        run_id: str | None = None,
    ) -> None:
        self.eval_cfg = eval_cfg
        self.sandbox_cfg = sandbox_cfg
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.plan: EvalPlan = plan_evaluation(timeline(panel), eval_cfg)
        self.executor = make_executor(sandbox_cfg, self.run_id)
        self.harness_hash = harness_hash()
        self._panel = panel
        self.reward_view = write_view(panel, self.plan.reward_end, self.cache_dir / "views")
        self.lookahead_view = (
            write_view(panel, self.plan.lookahead_cut, self.cache_dir / "views") if eval_cfg.lookahead_check else None
        )

    # ---- the public API ----

    def run(self, spec: ExperimentSpec) -> ExecutionResult:
        """Run the reward-window folds (and the lookahead guard); a failing experiment is a result."""
        lookahead = (self.lookahead_view, self.plan.lookahead_fold()) if self.lookahead_view else None
        return self._run_job(_Job(spec, self.reward_view, self.plan.folds, lookahead))

    def run_many(
        self, specs: Sequence[ExperimentSpec], on_done: Callable[[int, ExecutionResult], None] | None = None
    ) -> list[ExecutionResult]:
        """Run a batch on `sandbox_cfg.workers` workers; results in input order, equal to running them serially.

        `on_done(index, result)` is called on the calling thread as each experiment finishes.
        """
        results: list[ExecutionResult | None] = [None] * len(specs)
        pool = ThreadPoolExecutor(max_workers=self.sandbox_cfg.workers, thread_name_prefix="sandbox")
        try:
            futures = {pool.submit(self.run, spec): index for index, spec in enumerate(specs)}
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_done is not None:
                    on_done(index, results[index])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an infrastructure fault, start nothing new
        return [result for result in results if result is not None]

    def run_holdout(self, spec: ExperimentSpec) -> ExecutionResult:
        """Train on the reward window, predict the holdout. For reports only: never use it in a reward."""
        if self.plan.holdout_fold is None:
            raise ValueError("there is no holdout (EvalConfig.holdout_fraction is 0): nothing to predict")
        holdout_view = write_view(self._panel, None, self.cache_dir / "views")
        return self._run_job(_Job(spec, holdout_view, [self.plan.holdout_fold], None))

    def predictions(self, result: ExecutionResult) -> pl.DataFrame:
        """The out-of-sample predictions of an ok result: (timestamp, symbol, fold, p_up)."""
        if result.predictions_path is None:
            raise ValueError(f"this result has no predictions (status {result.status}: {result.message})")
        return pl.read_parquet(result.predictions_path)

    # ---- cache ----

    def _cache_key(self, job: _Job) -> str:
        payload = {
            "code": {"features": job.spec.features, "model": job.spec.model},
            "data": job.view.data_hash,
            "folds": [fold.to_wire() for fold in job.folds],
            "horizon": self.eval_cfg.horizon,
            "seed": self.seed,
            "harness": self.harness_hash,
            "image": getattr(self.executor, "image", None),
            "executor": self.executor.name,
            "limits": self.sandbox_cfg.model_dump(
                include={"timeout_seconds", "memory_mb", "cpus", "pids_limit", "tmpfs_mb", "output_limit_kb"}
            ),
            "lookahead": None
            if job.lookahead is None
            else {"data": job.lookahead[0].data_hash, "fold": job.lookahead[1].to_wire()},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def _run_job(self, job: _Job) -> ExecutionResult:
        key = self._cache_key(job)
        cached = self.cached(key)
        if cached is not None:
            return cached
        with self._locked(key):
            cached = self.cached(key)  # another worker or process may have finished it while we waited
            if cached is not None:
                return cached
            result = self._execute_job(job, key)
            write_bytes_atomic(self._result_path(key), result.model_dump_json(indent=1).encode())
            return result

    def _result_path(self, key: str) -> Path:
        return self.cache_dir / "results" / f"{key}.json"

    def cached(self, key: str) -> ExecutionResult | None:
        """The stored result of cache key `key` (with `cached=True`), or None when there is none."""
        path = self._result_path(key)
        if not path.is_file():
            return None
        try:
            result = ExecutionResult.model_validate_json(path.read_bytes())
        except ValidationError:
            return None  # written by an older version of this module: run again
        if result.predictions_path is not None and not result.predictions_path.is_file():
            return None  # predictions deleted by hand: run again
        return result.model_copy(update={"cached": True})

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        path = self.cache_dir / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    # ---- running ----

    def _execute_job(self, job: _Job, key: str) -> ExecutionResult:
        main = self._attempt(job.spec, job.view, job.folds)
        attempt, lookahead_max_diff = main, None
        if main.ok and job.lookahead is not None:
            attempt, lookahead_max_diff = self._lookahead_guard(job, main)
        predictions_path = None
        if attempt.ok and attempt.predictions is not None:
            predictions_path = (self.cache_dir / "predictions" / f"{key}.parquet").resolve()
            with atomic_path(predictions_path) as temporary:
                attempt.predictions.write_parquet(temporary)
        return ExecutionResult(
            status=attempt.status,
            error_class=None if attempt.ok else ErrorClass(attempt.status),
            message=attempt.message,
            traceback=attempt.traceback,
            timings=attempt.timings,
            peak_memory_mb=attempt.peak_memory_mb,
            exit_code=attempt.exit_code,
            stderr_tail=attempt.stderr_tail,
            spec_hash=job.spec.code_hash,
            data_hash=job.view.data_hash,
            harness_hash=self.harness_hash,
            cache_key=key,
            predictions_path=predictions_path,
            executor=self.executor.name,
            lookahead_max_diff=lookahead_max_diff,
        )

    def _lookahead_guard(self, job: _Job, main: _Attempt) -> tuple[_Attempt, float | None]:
        """Re-run the last fold on data cut at the fold's (shortened) test end; compare up to the cut."""
        assert job.lookahead is not None and main.predictions is not None
        view, fold = job.lookahead
        cut = fold.test_end
        rerun = self._attempt(job.spec, view, [fold])
        timings = {**main.timings, "lookahead_wall": rerun.timings.get("wall", 0.0)}
        if not rerun.ok or rerun.predictions is None:
            failed = _Attempt(
                status=ErrorClass.lookahead,
                message=(
                    f"the re-run on data cut at {cut:%Y-%m-%d %H:%M} failed ({rerun.status}: {rerun.message}); "
                    "an experiment that needs data after the cut to run reads the future"
                ),
                traceback=rerun.traceback,
                timings=timings,
                peak_memory_mb=main.peak_memory_mb,
                exit_code=rerun.exit_code,
                stderr_tail=rerun.stderr_tail,
            )
            return failed, None
        full = main.predictions.filter((pl.col("fold") == fold.index) & (pl.col("timestamp") <= cut))
        joined = full.join(rerun.predictions, on=["timestamp", "symbol", "fold"], suffix="_cut")
        a = joined.get_column("p_up").to_numpy()
        b = joined.get_column("p_up_cut").to_numpy()
        difference = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
        difference[np.isnan(difference)] = 1.0  # NaN on one side only: as different as probabilities get
        max_diff = float(difference.max()) if len(difference) else 0.0
        changed = int((difference > LOOKAHEAD_TOLERANCE).sum())
        checked = replace(main, timings=timings)
        if changed:
            checked.status = ErrorClass.lookahead
            checked.message = (
                f"{changed} of {len(difference)} predictions at or before {cut:%Y-%m-%d %H:%M} changed when the "
                f"data after it was removed (largest change of p_up: {max_diff:.3g}): the features or the model "
                "read the future (shift(-1), centred windows, full-sample statistics, stashed globals)"
            )
            checked.predictions = None
        return checked, max_diff

    def _attempt(self, spec: ExperimentSpec, view: DataView, folds: list[Fold]) -> _Attempt:
        task = {
            "spec": {"name": spec.name, "features": spec.features, "model": spec.model},
            "folds": [fold.to_wire() for fold in folds],
            "horizon": self.eval_cfg.horizon,
            "seed": self.seed,
            "time_limit_seconds": self.sandbox_cfg.timeout_seconds,
        }
        with tempfile.TemporaryDirectory(prefix="sharpe-rl-task-") as directory:
            task_path = Path(directory) / "task.json"
            task_path.write_text(json.dumps(task))
            task_path.chmod(0o644)
            outcome = self.executor.execute(task_path, view.path)
        return self._interpret(outcome, view, folds)

    def _interpret(self, outcome: RawOutcome, view: DataView, folds: list[Fold]) -> _Attempt:
        cfg = self.sandbox_cfg
        base = {
            "exit_code": outcome.exit_code,
            "stderr_tail": outcome.stderr_tail,
            "timings": {"wall": outcome.wall_seconds},
        }
        if outcome.timed_out:
            message = f"killed after {host_time_limit(cfg):g} s (time limit {cfg.timeout_seconds:g} s)"
            return _Attempt(status=ErrorClass.timeout, message=message, **base)
        if outcome.oom_killed:
            message = f"killed at the {cfg.memory_mb} MB memory limit"
            return _Attempt(status=ErrorClass.out_of_memory, message=message, **base)
        try:
            report = read_report(outcome.stdout)
            base.update(timings={**report.timings, "wall": outcome.wall_seconds}, peak_memory_mb=report.peak_memory_mb)
            if report.status != "ok":
                return _Attempt(status=report.status, message=report.message, traceback=report.traceback, **base)
            assert report.predictions is not None  # the report model guarantees it for "ok"
            predictions = decode_predictions(report.predictions).sort("fold", "timestamp", "symbol")
        except ReportError as exc:
            return _Attempt(status=ErrorClass.bad_predictions, message=f"{exc} (exit code {outcome.exit_code})", **base)
        problem = _row_mismatch(predictions, view.test_rows(folds)) or bad_predictions_reason(
            predictions.get_column("p_up").to_list(), predictions.get_column("fold").to_list()
        )
        if problem:
            return _Attempt(status=ErrorClass.bad_predictions, message=problem, **base)
        return _Attempt(status="ok", predictions=predictions, **base)


def _row_mismatch(predictions: pl.DataFrame, expected: pl.DataFrame) -> str | None:
    """Why the predicted rows are not exactly the expected test rows, or None when they are."""
    got = predictions.select("timestamp", "symbol", "fold")
    if got.equals(expected):
        return None
    keys = ["timestamp", "symbol", "fold"]
    unexpected = got.join(expected, on=keys, how="anti").height
    missing = expected.join(got, on=keys, how="anti").height
    duplicated = got.height - got.unique().height
    return (
        f"the predictions do not cover exactly the test rows: {expected.height} expected, {got.height} received "
        f"({unexpected} unexpected, {missing} missing, {duplicated} duplicated)"
    )
