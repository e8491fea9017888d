"""Evaluating one completion: the static checks, the sandbox, and the host-side score on the reward window.

`evaluate(completion, evaluation)` is the one path from what the policy wrote to an `Outcome`: the
pipeline's execute step, `sharpe-rl exec`, `sharpe-rl rerun` and the benchmarks all call it. Its
arguments name everything the outcome depends on: the text, and an `EvaluationRef` (the dataset's
path and content hash, the evaluation protocol, the sandbox settings, the seed and the result
cache). No policy, no tracking, no replay buffer: it runs unchanged on a thread, in another
process, or on a Dask worker on another machine, which reaches its own Docker engine through
DOCKER_HOST and the dataset at the same path (its hash is checked before anything runs).

What can happen:
- the experiment fails (a static check, the sandbox, unusable predictions): an `Outcome` with its
  error class, never an exception;
- the sandbox cannot run here (no engine, the engine restarted, image missing):
  `InfrastructureError`, which the pipeline retries; the disk is full, or another OS error:
  `OSError`; the dataset differs from the run's: `DatasetMismatch`. These stop the step: no
  experiment is to blame, and recording one as a failure would teach the policy a lie;
- anything else (a bug on the host side, such as CPython's gh-106905 in the checks): recorded
  against this one experiment as `runtime_error`, the exception's class in the message. One
  experiment never ends a run.

The loaded form of a ref (the panel, its evaluation plan, the sandbox runner) is built once per
process and kept: it depends on the ref alone. `close_evaluation(ref)` forgets it and removes the
sandboxes its runner started ahead of their tasks (a Dask worker's are removed by their own idle
timeout: a sandbox waits at most `contract.IDLE_SECONDS` for its task).
"""

from __future__ import annotations

import logging
import socket
import threading
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from sharpe_rl.checks import check_completion
from sharpe_rl.config import EvalConfig, RewardConfig, RunConfig, SandboxConfig
from sharpe_rl.data.atomic import sha256_file
from sharpe_rl.data.clock import Clock, decision_times
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.data.splits import EvalPlan, fold_rows, plan_evaluation, reward_panel, timeline
from sharpe_rl.noskill import NoSkillBand, cached_band
from sharpe_rl.policy.knowledge import policy_knowledge
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS, ErrorClass
from sharpe_rl.sandbox.disguise import load_disguise_key
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.scoring import Metrics, score_predictions, shape_reward
from sharpe_rl.spec import ExperimentSpec, SpecError

log = logging.getLogger(__name__)

#: What one `make_features` call costs in the sandbox, for the workload estimate a run prints: a fixed part (the
#: frame, the call, the row handed back) and a part per row of the frame (a typical feature set's groupby
#: windows). Measured with bench/sandbox_overhead.py on the slower of the machines measured (docs/performance.md),
#: so that the warning comes early rather than late.
SECONDS_PER_FEATURE_CALL = 0.004
SECONDS_PER_FEATURE_ROW = 2e-6


class DatasetMismatch(RuntimeError):
    """The dataset at the ref's path is not the one the run was started on."""


class EvaluationRef(BaseModel):
    """Everything an evaluation depends on besides the completion; small, hashable, serialisable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Path
    data_sha256: str
    eval: EvalConfig
    sandbox: SandboxConfig
    seed: int = 0
    cache_dir: Path
    run_id: str | None = None
    disguise_key: str = Field(repr=False)  # the host's secret for the data's disguise (sandbox/disguise.py)
    holdout_after: datetime | None = None  # the policy's knowledge cutoff: the holdout starts after it where it can

    @classmethod
    def of(
        cls,
        dataset: Path,
        eval_cfg: EvalConfig,
        sandbox: SandboxConfig,
        cache_dir: Path,
        *,
        seed: int = 0,
        run_id: str | None = None,
        holdout_after: datetime | None = None,
    ) -> EvaluationRef:
        """The ref of `dataset` as it is now (its content hash is computed here)."""
        dataset = Path(dataset).resolve()
        return cls(
            dataset=dataset,
            data_sha256=sha256_file(dataset),
            eval=eval_cfg,
            sandbox=sandbox,
            seed=seed,
            cache_dir=Path(cache_dir).resolve(),
            run_id=run_id,
            disguise_key=load_disguise_key(Path(cache_dir)),
            holdout_after=holdout_after,
        )

    @classmethod
    def for_run(
        cls, config: RunConfig, runs_dir: Path, run: str, *, sandbox: SandboxConfig | None = None
    ) -> EvaluationRef:
        """The ref a run evaluates with: its dataset, settings, seed, cache, and its policy's knowledge cutoff."""
        return cls.of(
            config.dataset,
            config.eval,
            sandbox or config.sandbox,
            runs_dir / "cache",
            seed=config.seed,
            run_id=run,
            holdout_after=policy_knowledge(config.policy).holdout_after,
        )


class Outcome(BaseModel):
    """What became of one completion: a static-check failure, or a sandbox result and its score."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    spec: ExperimentSpec | None = None
    error_class: ErrorClass | None = None
    message: str | None = None
    result: ExecutionResult | None = None
    metrics: Metrics | None = None  # the reward window's score, when it ran and could be scored

    @property
    def ok(self) -> bool:
        return self.error_class is None

    @property
    def status(self) -> str:
        return "ok" if self.error_class is None else self.error_class.value

    def reward(
        self,
        cfg: RewardConfig,
        *,
        noskill_sigma: float | None,
        n_trials: int = 1,
        trials_sharpe_variance: float = 0.0,
    ) -> float:
        """The shaped reward of this outcome, as one trial among `n_trials` (`shape_reward`; a run passes its own)
        on a panel whose no-skill noise is `noskill_sigma` (`Evaluation.noskill.sigma`)."""
        if self.metrics is not None and self.error_class is None:
            return shape_reward(
                self.metrics,
                cfg,
                n_trials=n_trials,
                trials_sharpe_variance=trials_sharpe_variance,
                noskill_sigma=noskill_sigma,
            )
        return shape_reward(self.error_class or ErrorClass.bad_predictions, cfg)


class Evaluation:
    """An EvaluationRef loaded in this process: the panel, the plan, and (on first use) the sandbox runner."""

    def __init__(self, ref: EvaluationRef) -> None:
        found = sha256_file(ref.dataset) if ref.dataset.is_file() else "no file"
        if found != ref.data_sha256:
            raise DatasetMismatch(
                f"{ref.dataset} on {socket.gethostname()} is not the run's dataset (sha256 {found[:12]}, the run's "
                f"{ref.data_sha256[:12]}): copy the run's file to that path on every machine that evaluates"
            )
        self.ref = ref
        self.panel = load_panel(ref.dataset)
        self.symbols: list[str] = self.panel.get_column("symbol").unique().sort().to_list()
        self.interval: timedelta = detect_interval(self.panel)
        self.plan: EvalPlan = plan_evaluation(timeline(self.panel), ref.eval, ref.holdout_after)
        self.reward_panel = reward_panel(self.panel, self.plan)

    @cached_property
    def runner(self) -> SandboxRunner:
        """The sandbox runner (with Docker: a client of the engine DOCKER_HOST names, and the image)."""
        ref = self.ref
        return SandboxRunner(
            self.panel,
            ref.eval,
            ref.sandbox,
            ref.cache_dir,
            seed=ref.seed,
            run_id=ref.run_id,
            disguise_key=ref.disguise_key,
            holdout_after=ref.holdout_after,
        )

    @cached_property
    def noskill(self) -> NoSkillBand:
        """What zero-skill experiments score on the reward folds (cached on disk by the dataset's hash and settings)."""
        ref = self.ref
        rows = fold_rows(self.reward_panel, self.plan.folds)
        return cached_band(
            ref.cache_dir, ref.data_sha256, self.reward_panel, rows, ref.eval, bar_interval=self.interval
        )

    @cached_property
    def clock(self) -> Clock:
        """The evaluation's decision cadence, label horizon and history, on this panel's bars."""
        return Clock.of(self.ref.eval, self.interval)

    @cached_property
    def feature_calls(self) -> int:
        """The make_features calls one experiment makes on the reward window: one per decision time of the test
        folds (the harness's point-in-time steps), and one per fold's fit."""
        view = self.reward_panel.get_column("timestamp").unique().sort().dt.epoch("ns").to_numpy()
        decisions = decision_times(view, [fold.to_wire() for fold in self.plan.folds], self.clock)
        return len(decisions) + len(self.plan.folds)

    def workload(self) -> str:
        """One experiment's point-in-time workload, and a warning when it is unlikely to fit in the time limit."""
        rows = len(self.symbols) * (self.clock.lookback / self.interval)  # rows of df at a decision, at most
        seconds = self.feature_calls * (SECONDS_PER_FEATURE_CALL + SECONDS_PER_FEATURE_ROW * rows)
        limit = self.ref.sandbox.timeout_seconds
        text = (
            f"{self.clock.describe()}: {self.feature_calls:,} make_features calls per experiment, on up to "
            f"{rows:,.0f} rows each (about {seconds:,.0f} s)"
        )
        if seconds > limit:
            text += (
                f"\nwarning: an experiment needs about {seconds:,.0f} s, past the sandbox's {limit:g} s limit: most "
                "experiments will time out. Decide less often (eval.decide_every), give less history "
                "(eval.lookback), use fewer symbols or a shorter dataset, or raise sandbox.timeout_seconds."
            )
        return text

    def score(self, result: ExecutionResult) -> Metrics | None:
        """Host-side metrics of an executed experiment on the reward window (None when it failed)."""
        if not result.ok:
            return None
        predictions = self.runner.predictions(result)
        return score_predictions(predictions, self.reward_panel, self.ref.eval, bar_interval=self.interval)

    def score_holdout(self, spec: ExperimentSpec) -> tuple[ExecutionResult, Metrics | None]:
        """Train on the whole reward window, predict the holdout, score it. For reports only, never rewards."""
        result = self.runner.run_holdout(spec)
        if not result.ok:
            return result, None
        holdout = self.panel.filter(pl.col("timestamp") >= self.plan.holdout_start)
        predictions = self.runner.predictions(result)
        return result, score_predictions(predictions, holdout, self.ref.eval, bar_interval=self.interval)


_loaded: dict[EvaluationRef, Evaluation] = {}
_loaded_lock = threading.Lock()


def load_evaluation(ref: EvaluationRef) -> Evaluation:
    """The Evaluation of `ref` in this process, built on first use."""
    with _loaded_lock:
        if ref not in _loaded:
            _loaded[ref] = Evaluation(ref)
        return _loaded[ref]


def close_evaluation(ref: EvaluationRef) -> None:
    """Forget `ref`'s Evaluation in this process, removing the sandboxes its runner started ahead of tasks."""
    with _loaded_lock:
        loaded = _loaded.pop(ref, None)
    if loaded is not None and "runner" in loaded.__dict__:  # the runner was built (cached_property)
        loaded.runner.close()


def close_evaluations() -> None:
    """close_evaluation for every ref loaded in this process (the end of a run, a test)."""
    for ref in list(_loaded):
        close_evaluation(ref)


def evaluate(completion: str, evaluation: EvaluationRef) -> Outcome:
    """Check, run and score one completion; see the module docstring for what raises and what is an Outcome."""
    try:
        spec = check_completion(completion, OHLCV_COLUMNS)
    except SpecError as exc:
        return Outcome(spec=exc.spec, error_class=exc.error_class, message=str(exc))
    except Exception as exc:
        return _host_error("the static checks", exc)
    loaded = load_evaluation(evaluation)
    try:
        result = loaded.runner.run(spec)
    except (InfrastructureError, OSError):
        raise
    except Exception as exc:
        return _host_error("the sandbox runner", exc, spec=spec)
    if not result.ok:
        error = result.error_class
        return Outcome(spec=spec, error_class=error, message=result.message, result=result)
    try:
        metrics = loaded.score(result)
    except OSError:
        raise
    except Exception as exc:
        return _host_error("scoring", exc, spec=spec, result=result)
    if metrics is None or not metrics.valid:
        reason = metrics.message if metrics is not None else "no predictions"
        return Outcome(spec=spec, error_class=ErrorClass.bad_predictions, message=reason, result=result)
    return Outcome(spec=spec, result=result, metrics=metrics)


def evaluate_holdout(spec: ExperimentSpec, evaluation: EvaluationRef) -> dict[str, Any]:
    """Train on the reward window, score on the holdout (reports only): `metric_holdout_*` and a `holdout_status`."""
    result, metrics = load_evaluation(evaluation).score_holdout(spec)
    values = metric_numbers(metrics) if metrics is not None and metrics.valid else {}
    status = "ok" if values else str(result.error_class or (metrics.reason if metrics else "no predictions"))
    return {f"metric_holdout_{k}": v for k, v in values.items()} | {"holdout_status": status}


def metric_numbers(metrics: Metrics) -> dict[str, float | None]:
    """The numbers of a score, by name (as the buffer's `metric_*` columns hold them)."""
    return {
        key: float(value) if value is not None else None
        for key, value in metrics.model_dump(exclude={"valid", "reason", "message"}).items()
    }


def _host_error(
    stage: str, exc: Exception, *, spec: ExperimentSpec | None = None, result: ExecutionResult | None = None
) -> Outcome:
    """An unexpected exception on the host, recorded against the one experiment it happened to."""
    log.exception("host error in %s while evaluating %s", stage, spec.name if spec else "a completion")
    message = f"host error in {stage}: {type(exc).__name__}: {exc}"[:2000]
    return Outcome(spec=spec, error_class=ErrorClass.runtime_error, message=message, result=result)
