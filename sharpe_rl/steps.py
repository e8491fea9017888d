"""The steps of an RL run, as plain functions whose arguments name everything their result depends on.

A cycle is generate → execute → score → log → update:

- `policy.steps.generate(policy_ref, prompt, n, cycle=, seed=) -> Batch`
- `evaluation.evaluate(completion, evaluation_ref) -> Outcome`, once per completion, anywhere
  (a thread, another process, a Dask worker on another machine): no policy, no MLflow, no buffer
- `score(run, batch, executions) -> Scored`: host-side rewards, deflated by the run's trials so far
- `log(run, scored, timings) -> Logged`: the replay buffer, then MLflow
- `policy.steps.update(policy_ref, cycle, experiences) -> Update` (its checkpoint commits the
  cycle), then `log_update(run, update, logged)`

`start(config) -> RunRef` opens a run once: it checks the settings against those the run was
started with, the dataset, and the policy, starts (or finds) the MLflow parent run, and says
where the run resumes. A `RunRef` is plain data: the flow hands it to every step, so no step
reaches for state a previous step left in memory. Each step returns what the next needs, and the
timings the progress display and MLflow show.

Resume: a cycle is committed by its checkpoint, written last. Everything before it is either
cached (executions, by content hash) or idempotent (the buffer file of a cycle is replaced, MLflow
writes are keyed by cycle and index), and generation is seeded by (run seed, cycle) from the
previous checkpoint's weights. So a run killed anywhere in a cycle repeats that cycle exactly on
resume, and nothing is lost or written twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.analysis.classify import classify
from sharpe_rl.analysis.tables import annotate, cycle_metrics
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import RunConfig
from sharpe_rl.data.atomic import write_bytes_atomic
from sharpe_rl.data.card import card_path
from sharpe_rl.evaluation import EvaluationRef, Outcome, close_evaluation, load_evaluation, metric_numbers
from sharpe_rl.experience import Experience
from sharpe_rl.holdout import write_holdout
from sharpe_rl.policy import steps as policy_steps
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, policy_source
from sharpe_rl.policy.prompts import PROMPTS_DIR, render_prompt
from sharpe_rl.policy.steps import Batch, PolicyRef, Update
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.sandbox.docker_executor import ENGINE_ERRORS, reap_containers
from sharpe_rl.scoring import deflate
from sharpe_rl.spec import ExperimentSpec
from sharpe_rl.tracking import Tracker

logger = logging.getLogger(__name__)

#: Settings that do not change what a run computes: a run may resume with other values.
_RESUMABLE_SETTINGS: dict[str, Any] = {"cycles": True, "task_runner": True, "sandbox": {"workers"}}


class RunError(ValueError):
    """A run cannot start as configured; the message says what to change."""


def run_config_path(runs_dir: Path, run: str) -> Path:
    """Where a run's settings are kept, so a resume (or a rerun) uses exactly the same ones."""
    return runs_dir / "checkpoints" / run / "run-config.json"


class RunRef(BaseModel):
    """A started run, as values: what every step after `start` needs to know about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    evaluation: EvaluationRef
    prompt: str
    parent_run_id: str
    policy: PolicyRef  # where the run resumes: its latest checkpoint, or the base policy
    description: str

    @property
    def name(self) -> str:
        return self.config.name or ""

    @property
    def pending_cycles(self) -> list[int]:
        """The cycles still to run: from the first one without a checkpoint."""
        first = 0 if self.policy.cycle is None else self.policy.cycle + 1
        return list(range(first, self.config.cycles))

    def tracker(self) -> Tracker:
        return Tracker(self.config.runs_dir, self.config.tracking_uri, parent_run_id=self.parent_run_id)


@dataclass(frozen=True)
class Executions:
    """The outcomes of a cycle's batch, in batch order."""

    outcomes: list[Outcome]
    seconds: float


@dataclass(frozen=True)
class Scored:
    """A cycle's experiences, rewarded."""

    cycle: int
    experiences: list[Experience]
    seconds: float


@dataclass(frozen=True)
class Logged:
    """A cycle as logged: its summary metrics (those MLflow has at step=cycle)."""

    cycle: int
    summary: dict[str, float]
    seconds: float


# ---- opening and closing a run ------------------------------------------------------------


def start(config: RunConfig) -> RunRef:
    """Open (or resume) the run `config` names; RunError when it cannot start as configured."""
    if config.name is None:
        raise RunError("a run needs a name before it can start")
    name, runs = config.name, config.runs_dir
    fresh = _remember_config(config, run_config_path(runs, name))
    try:
        policy_source(config.policy)
    except FileNotFoundError as exc:
        raise RunError(str(exc)) from exc
    evaluation = EvaluationRef.of(
        config.dataset, config.eval, config.sandbox, runs / "cache", seed=config.seed, run_id=name
    )
    dataset = load_evaluation(evaluation)
    if config.eval.scheme == "cross_sectional" and len(dataset.symbols) < 2:
        raise RunError(
            f"{config.dataset} has one symbol: the cross_sectional scheme needs at least two; "
            "use the per_asset scheme or a multi-symbol dataset"
        )
    if config.task_runner.kind == "threads":
        _reap_local_containers(name)  # a crashed earlier attempt of this run may have left some
    prompt = render_prompt(config.prompt_version, OHLCV_COLUMNS, dataset.interval, config.eval.horizon, dataset.symbols)
    last = Checkpoints(runs, name).latest_cycle()
    policy = PolicyRef(policy=config.policy, ppo=config.ppo, seed=config.seed, runs_dir=runs, run=name, cycle=last)
    tracker = Tracker(runs, config.tracking_uri)
    parent = tracker.start(
        config,
        name,
        fresh=fresh,
        artifacts={"prompts": PROMPTS_DIR / f"{config.prompt_version}.j2", "data": card_path(config.dataset)},
    )
    where = "starting" if last is None else f"resuming at cycle {last + 1}"
    description = (
        f"run {name}: {where}, {config.cycles} cycles × {config.batch_size} experiments on {config.dataset} "
        f"({len(dataset.symbols)} symbols, reward window to {dataset.plan.reward_end:%Y-%m-%d}); "
        f"executions on {_where_executions_run(config)}; MLflow: {tracker.run_url_hint}"
    )
    return RunRef(
        config=config,
        evaluation=evaluation,
        prompt=prompt,
        parent_run_id=parent,
        policy=policy,
        description=description,
    )


def finish(run: RunRef, *, failed: bool = False) -> None:
    """Close the run: its MLflow parent FINISHED (or FAILED), its policy out of memory, its containers gone.

    Closing a failed run never raises: what made it fail is the error to show, not a cleanup's.
    """
    policy_steps.release(run.name)
    try:
        close_evaluation(run.evaluation)
        run.tracker().finish(failed=failed)
        if run.config.task_runner.kind == "threads":
            _reap_local_containers(run.name)
    except Exception:
        if not failed:
            raise
        logger.exception("could not mark run %s FAILED in MLflow", run.name)


def generation_seed(run: RunRef, cycle: int) -> int:
    """The seed of a cycle's sampling: the same run and cycle sample the same completions."""
    return run.config.seed * 1_000_003 + cycle


# ---- score, log -----------------------------------------------------------------------------


def score(run: RunRef, batch: Batch, executions: Executions) -> Scored:
    """Rewards for a cycle's outcomes; each DSR deflated by the number of the run's trials so far."""
    started = time.perf_counter()
    metrics = [outcome.metrics for outcome in executions.outcomes]
    sharpes = earlier_sharpes(run, batch.cycle) + [m.sharpe_net for m in metrics if m is not None]
    variance = statistics.pvariance(sharpes) if len(sharpes) > 1 else 0.0
    experiences = [
        _experience(run, batch.cycle, index, generation, outcome, variance, len(sharpes))
        for index, (generation, outcome) in enumerate(zip(batch.generations, executions.outcomes, strict=True))
    ]
    return Scored(cycle=batch.cycle, experiences=experiences, seconds=time.perf_counter() - started)


def earlier_sharpes(run: RunRef, cycle: int) -> list[float]:
    """The net Sharpe of every scored experiment of the run before `cycle` (the trials a DSR deflates by)."""
    frame = ReplayBuffer(run.config.runs_dir).frame(run=run.name)
    if frame.is_empty() or "metric_sharpe_net" not in frame.columns:
        return []
    earlier = frame.filter((pl.col("cycle") < cycle) & pl.col("error_class").is_null())
    return earlier.get_column("metric_sharpe_net").drop_nulls().to_list()


def log(run: RunRef, scored: Scored, timings: Mapping[str, float]) -> Logged:
    """Persist the cycle to the replay buffer, then to MLflow (which may be down: it catches up later)."""
    started = time.perf_counter()
    buffer = ReplayBuffer(run.config.runs_dir)
    buffer.write(run.name, scored.cycle, scored.experiences)
    run_so_far = buffer.frame(run=run.name).filter(pl.col("cycle") <= scored.cycle)
    summary = cycle_metrics(annotate(run_so_far), scored.cycle) | {f"time_{k}": v for k, v in timings.items()}
    run.tracker().log_cycle(scored.cycle, summary, scored.experiences)
    return Logged(cycle=scored.cycle, summary=summary, seconds=time.perf_counter() - started)


def log_update(run: RunRef, update: Update, logged: Logged) -> dict[str, float]:
    """Log the PPO step (stats, its time and the log step's) and the adapter it saved; returns the cycle's numbers."""
    cycle = update.policy.cycle
    assert cycle is not None
    stats = {f"ppo_{k}": v for k, v in update.stats.items()}
    stats |= {"time_update": update.seconds, "time_log": logged.seconds}
    tracker = run.tracker()
    tracker.log_metrics(cycle, stats)
    checkpoint = update.policy.checkpoint
    assert checkpoint is not None
    tracker.log_artifacts(checkpoint / "adapter", f"adapter/cycle-{cycle:03d}")
    return logged.summary | stats


# ---- the final holdout (reports only, never rewards) ----------------------------------------


@dataclass(frozen=True)
class Candidate:
    """An experiment of the run chosen for the holdout."""

    cycle: int
    index: int
    spec: ExperimentSpec


def holdout_candidates(run: RunRef, top_n: int = 10) -> list[Candidate]:
    """The run's best distinct experiments by in-sample net Sharpe (so the report shows how much survives)."""
    frame = ReplayBuffer(run.config.runs_dir).frame(run=run.name)
    if frame.is_empty() or "metric_sharpe_net" not in frame.columns:
        return []
    best = (
        frame.filter(pl.col("error_class").is_null())
        .sort("metric_sharpe_net", descending=True)
        .unique("code_hash", keep="first", maintain_order=True)
        .head(top_n)
    )
    return [
        Candidate(row["cycle"], row["index"], ExperimentSpec.model_validate_json(row["spec_json"]))
        for row in best.iter_rows(named=True)
    ]


def save_holdout(run: RunRef, candidates: Sequence[Candidate], scores: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Keep the holdout scores beside the buffer (the report joins them in)."""
    rows = [
        {"run": run.name, "cycle": c.cycle, "index": c.index} | dict(s) for c, s in zip(candidates, scores, strict=True)
    ]
    table = pl.DataFrame(rows)
    if not table.is_empty():
        write_holdout(run.config.runs_dir, run.name, table)
    return table


# ---- helpers --------------------------------------------------------------------------------


def _experience(
    run: RunRef, cycle: int, index: int, generation: Generation, outcome: Outcome, variance: float, n_trials: int
) -> Experience:
    metrics = deflate(outcome.metrics, n_trials, variance) if outcome.metrics is not None else None
    spec, result = outcome.spec, outcome.result
    try:
        classification = classify(spec) if spec is not None else None
    except Exception:  # a classifier bug costs this experiment its labels, never the cycle
        logger.exception("could not classify experiment %d of cycle %d", index, cycle)
        classification = None
    scored = outcome.model_copy(update={"metrics": metrics})
    return Experience.from_generation(
        generation,
        run=run.name,
        cycle=cycle,
        index=index,
        prompt_version=run.config.prompt_version,
        spec_json=spec.model_dump_json() if spec else None,
        name=spec.name if spec else None,
        model_family=classification.model_family if classification else None,
        custom_features=classification.custom_features if classification else None,
        error_class=outcome.error_class,
        error_message=outcome.message,
        metrics=metric_numbers(metrics) if metrics is not None and outcome.ok else {},
        reward=scored.reward(run.config.reward),
        code_hash=spec.code_hash if spec else None,
        cache_key=result.cache_key if result else None,
        timings=dict(result.timings) if result else {},
    )


def _remember_config(config: RunConfig, path: Path) -> bool:
    """Refuse to resume a run under other settings; True for a run starting afresh."""
    current = config.model_dump(mode="json", exclude=_RESUMABLE_SETTINGS)
    if path.exists():
        saved = RunConfig.model_validate_json(path.read_text()).model_dump(mode="json", exclude=_RESUMABLE_SETTINGS)
        if saved != current:
            changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise RunError(
                f"run {config.name} was started with other settings ({', '.join(changed)} differ); "
                "resume it with the same settings, or start a new run with another --name"
            )
        return False
    write_bytes_atomic(path, json.dumps(config.model_dump(mode="json"), indent=2).encode())
    return True


def _reap_local_containers(run: str) -> None:
    with contextlib.suppress(InfrastructureError, *ENGINE_ERRORS):  # no engine here: nothing of this run runs on it
        reap_containers(run_id=run)


def _where_executions_run(config: RunConfig) -> str:
    if config.task_runner.kind == "dask":
        return f"the Dask cluster at {config.task_runner.dask_address}"
    return f"{config.sandbox.workers} local worker(s), {config.sandbox.executor} executor"
