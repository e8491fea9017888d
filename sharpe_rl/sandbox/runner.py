"""SandboxRunner: the one entry point that runs generated experiments, checks them and caches results.

`run(spec)` executes the walk-forward folds of the reward window in the sandbox (on a view of the
data that ends at `plan.reward_end`) and validates what comes back on the host; `run_many` does
the same for a batch on N workers; `run_holdout` trains on the reward window and predicts the
holdout under the same protocol, for reports only (never for rewards).

Inside the sandbox the point-in-time protocol of `harness.py` runs: the experiment's process
receives the bars in time order and answers for time t before any later bar exists in it, so it
cannot read the future (docs/reward-integrity.md). There is no lookahead guard: a guard re-runs the
experiment and compares, which code can learn to recognise; the protocol leaves nothing to detect.

Host-side checks, none of which trusts the sandbox:
- The task (spec, folds, horizon, seed, limits, the bars) goes in on the sandbox's stdin with a
  fresh random nonce; the result is the stdout line carrying that nonce, validated strictly. A
  missing, truncated or malformed one is `bad_predictions` (or `timeout`/`out_of_memory` when the
  host saw the process killed for that). The harness answers with one probability per test row,
  in the host's own row order; the host attaches the rows itself, so the sandbox never names a
  timestamp or a symbol. The probabilities must lie in [0, 1] or be NaN, not all be NaN, and not
  be constant. Scoring happens elsewhere on the host.
- Timings and peak memory are the trusted harness's own measurements, in a fixed set of fields.

Cache: a result is stored under `cache_dir/results/<key>.json` (predictions beside it as Parquet)
where the key hashes everything that can change the outcome: the code, the data view, the folds,
horizon, lookback, rebalancing and seed, the harness and image, the executor and its limits. An
identical experiment never runs twice, across processes too (a file lock per key).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import ValidationError

from sharpe_rl.config import EvalConfig, SandboxConfig
from sharpe_rl.data.atomic import atomic_path, write_bytes_atomic
from sharpe_rl.data.clock import Clock, decision_times, training_times
from sharpe_rl.data.splits import EvalPlan, Fold, plan_evaluation, timeline, timeline_interval
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import BAD_TASK_EXIT, ErrorClass, bad_predictions_reason, encode_task
from sharpe_rl.sandbox.disguise import Disguise, load_disguise_key
from sharpe_rl.sandbox.docker_executor import DockerExecutor
from sharpe_rl.sandbox.executor import Executor, RawOutcome, host_time_limit
from sharpe_rl.sandbox.image import harness_hash
from sharpe_rl.sandbox.process_executor import ProcessExecutor
from sharpe_rl.sandbox.result import ExecutionResult, ReportError, decode_p_up, read_report
from sharpe_rl.sandbox.views import DataView, make_view
from sharpe_rl.spec import ExperimentSpec

#: Random bytes of the nonce that authenticates the harness's result line (a fresh one per task).
NONCE_BYTES = 16


def make_executor(config: SandboxConfig, run_id: str) -> Executor:
    """The executor `config.executor` names (Docker raises InfrastructureError without an engine/image)."""
    if config.executor == "docker":
        return DockerExecutor(config, run_id)
    return ProcessExecutor(config)


@dataclass(frozen=True)
class Job:
    """One experiment on one view, over some folds."""

    spec: ExperimentSpec
    view: DataView
    folds: list[Fold]


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
        disguise_key: str | None = None,
        holdout_after: datetime | None = None,
    ) -> None:
        self.eval_cfg = eval_cfg
        self.sandbox_cfg = sandbox_cfg
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.disguise_key = disguise_key or load_disguise_key(self.cache_dir)
        self.run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.plan: EvalPlan = plan_evaluation(timeline(panel), eval_cfg, holdout_after)
        self.clock = Clock.of(eval_cfg, timeline_interval(timeline(panel)))
        self.executor = make_executor(sandbox_cfg, self.run_id)
        self.harness_hash = harness_hash()
        self._panel = panel
        self.reward_view = make_view(panel, self.plan.reward_end)

    def close(self) -> None:
        """Remove the sandboxes started ahead of their tasks (a runner can still run after this)."""
        self.executor.close()

    def __enter__(self) -> SandboxRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def holdout_view(self) -> DataView:
        """The whole panel: the holdout run trains on the reward window and steps through the holdout."""
        return make_view(self._panel, None)

    # ---- the public API ----

    def run(self, spec: ExperimentSpec) -> ExecutionResult:
        """Run the reward-window folds; a failing experiment is a result."""
        return self._run_job(Job(spec, self.reward_view, self.plan.folds))

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
        return self._run_job(Job(spec, self.holdout_view, [self.plan.holdout_fold]))

    def predictions(self, result: ExecutionResult) -> pl.DataFrame:
        """The out-of-sample predictions of an ok result: (timestamp, symbol, fold, p_up)."""
        if result.predictions_path is None:
            raise ValueError(f"this result has no predictions (status {result.status}: {result.message})")
        return pl.read_parquet(result.predictions_path)

    # ---- cache ----

    def _cache_key(self, job: Job) -> str:
        payload = {
            "code": {"features": job.spec.features, "model": job.spec.model},
            "data": job.view.data_hash,
            "folds": [fold.to_wire() for fold in job.folds],
            "protocol": self.eval_cfg.model_dump(include={"horizon", "lookback", "decide_every", "embargo"}),
            "seed": self.seed,
            "disguise": hashlib.sha256(self.disguise_key.encode()).hexdigest()[:16],
            "harness": self.harness_hash,
            "image": getattr(self.executor, "image", None),
            "executor": self.executor.name,
            "limits": self.sandbox_cfg.model_dump(
                include={"timeout_seconds", "memory_mb", "cpus", "pids_limit", "tmpfs_mb", "output_limit_kb"}
            ),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]

    def _run_job(self, job: Job) -> ExecutionResult:
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

    def _execute_job(self, job: Job, key: str) -> ExecutionResult:
        attempt = self._attempt(job)
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
        )

    def task(self, job: Job, nonce: str) -> tuple[bytes, np.ndarray]:
        """The task as the harness reads it from stdin (the bars in disguise), and the view row of each task row."""
        view = job.view
        disguise = Disguise.draw(self.disguise_key, view.data_hash, job.spec.code_hash, len(view.symbols))
        timestamps, codes, ohlcv, order = disguise.bars(view.timestamps, view.codes, view.ohlcv)
        header = {
            "nonce": nonce,
            "spec": {"features": job.spec.features, "model": job.spec.model},
            "folds": [disguise.shift(fold.to_wire()) for fold in job.folds],
            "decisions": [int(t) + disguise.offset_ns for t in self.decisions(job)],
            "training": self.training(job, disguise.offset_ns),
            "horizon_ns": _ns(self.clock.horizon),
            "lookback_ns": _ns(self.clock.lookback),
            "seed": self.seed,
            "time_limit_seconds": self.sandbox_cfg.timeout_seconds,
        }
        arrays = {
            "timestamp": ("<i8", timestamps.astype("<i8").tobytes()),
            "symbol": ("<i4", codes.astype("<i4").tobytes()),
            "ohlcv": ("<f8", np.ascontiguousarray(ohlcv, dtype="<f8").tobytes()),
        }
        return encode_task(header, arrays), order

    def decisions(self, job: Job) -> np.ndarray:
        """The decision times of a job's test windows (ns): where the sandbox is asked, and scoring trades."""
        return decision_times(np.unique(job.view.timestamps), [f.to_wire() for f in job.folds], self.clock)

    def training(self, job: Job, offset_ns: int = 0) -> list[int] | None:
        """The times of the bars models are fitted on (shifted by `offset_ns`), or None for every bar."""
        until = max(fold.to_wire()["train_end"] for fold in job.folds)
        times = training_times(np.unique(job.view.timestamps), until, self.clock)
        return None if times is None else [int(t) + offset_ns for t in times]

    def _attempt(self, job: Job) -> _Attempt:
        nonce = secrets.token_hex(NONCE_BYTES)
        task, order = self.task(job, nonce)
        outcome = self.executor.execute(task)
        if outcome.exit_code == BAD_TASK_EXIT:
            raise InfrastructureError(f"the sandbox harness could not read its task: {outcome.stderr_tail[-500:]}")
        return self._interpret(outcome, job, nonce, order)

    def _interpret(self, outcome: RawOutcome, job: Job, nonce: str, order: np.ndarray) -> _Attempt:
        cfg = self.sandbox_cfg
        base = {
            "exit_code": outcome.exit_code,
            "stderr_tail": outcome.stderr_tail,
            "timings": {"wall": outcome.wall_seconds},
        }
        if outcome.timed_out:
            message = f"killed after {host_time_limit(cfg):g} s (time limit {cfg.timeout_seconds:g} s)"
            return _Attempt(status=ErrorClass.timeout, message=message, **base)
        rows = job.view.test_rows(job.folds)
        try:
            try:
                report = read_report(outcome.stdout, nonce)
            except ReportError:
                if outcome.oom_killed:  # the harness itself was killed: the engine's word is all there is
                    message = f"killed at the {cfg.memory_mb} MB memory limit"
                    return _Attempt(status=ErrorClass.out_of_memory, message=message, **base)
                raise
            base.update(
                timings={**report.timings.model_dump(), "wall": outcome.wall_seconds},
                peak_memory_mb=report.peak_memory_mb,
            )
            if report.status not in ("ok", ErrorClass.out_of_memory) and outcome.oom_killed:
                # a process of the experiment's was killed at the limit, and the experiment failed after it
                message = f"a process of the experiment was killed at the {cfg.memory_mb} MB memory limit"
                return _Attempt(status=ErrorClass.out_of_memory, message=message, traceback=report.traceback, **base)
            if report.status != "ok":
                return _Attempt(status=report.status, message=report.message, traceback=report.traceback, **base)
            assert report.p_up is not None  # the report model guarantees it for "ok"
            p_up = Disguise.restore(decode_p_up(report.p_up, rows.height), order, job.view.test_indices(job.folds))
        except ReportError as exc:
            return _Attempt(status=ErrorClass.bad_predictions, message=f"{exc} (exit code {outcome.exit_code})", **base)
        problem = bad_predictions_reason(p_up.tolist(), rows.get_column("fold").to_list())
        if problem:
            return _Attempt(status=ErrorClass.bad_predictions, message=problem, **base)
        predictions = rows.with_columns(p_up=pl.Series(p_up, dtype=pl.Float64)).sort("fold", "timestamp", "symbol")
        return _Attempt(status="ok", predictions=predictions, **base)


def _ns(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1) * 1000
