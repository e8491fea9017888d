"""One RL run in memory — its data, sandbox, policy, buffer and tracker — and the steps of a cycle.

The flows reach a run through `open_session(config)`, which builds a `RunSession` once per
process and run name, so Prefect tasks stay one-line calls and pass only serialisable values
(the config, the cycle number, the batch). The steps are plain methods: a cycle can be driven
without Prefect, and is in the tests.

A cycle is committed by its checkpoint, which is written last. Everything before it is either
cached (executions, by content hash) or idempotent (the buffer file of a cycle is replaced, the
MLflow records are keyed by cycle and index), and generation is seeded by (run seed, cycle)
from the previous checkpoint's weights. So a run killed anywhere in a cycle repeats that cycle
exactly on resume, and nothing is lost or written twice.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import log2
from pathlib import Path
from typing import Protocol

import polars as pl
from transformers import AutoTokenizer

from sharpe_rl.analysis.classify import classify
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.checks import check_completion
from sharpe_rl.config import RunConfig
from sharpe_rl.data.card import card_path
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.data.splits import reward_panel
from sharpe_rl.experience import Experience
from sharpe_rl.holdout import write_holdout
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, make_generator
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.prompts import PROMPTS_DIR, render_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS, ErrorClass
from sharpe_rl.sandbox.docker_executor import reap_containers
from sharpe_rl.sandbox.result import ExecutionResult
from sharpe_rl.sandbox.runner import SandboxRunner
from sharpe_rl.scoring import Metrics, deflate, score_predictions, shape_reward
from sharpe_rl.spec import ExperimentSpec, SpecError
from sharpe_rl.tracking import Tracker


def run_config_path(runs_dir: Path, run: str) -> Path:
    """Where a run's settings are kept, so a resume (or a rerun) uses exactly the same ones."""
    return runs_dir / "checkpoints" / run / "run-config.json"


class RunError(ValueError):
    """A run cannot start as configured; the message says what to change."""


@dataclass(frozen=True)
class Outcome:
    """What became of one completion before scoring: a static-check failure, or a sandbox result."""

    spec: ExperimentSpec | None
    error_class: ErrorClass | None = None
    message: str | None = None
    result: ExecutionResult | None = None


class Listener(Protocol):
    """Something that shows a run's progress (the CLI's progress bars)."""

    def cycle_started(self, run: str, cycle: int, cycles: int, batch_size: int) -> None: ...
    def experiment_done(self, cycle: int, outcome: Outcome) -> None: ...
    def cycle_finished(self, cycle: int, summary: dict[str, float]) -> None: ...


#: Progress listeners of this process; the CLI adds one, the flows never need to know.
listeners: list[Listener] = []

_sessions: dict[str, RunSession] = {}
_sessions_lock = threading.Lock()


def open_session(config: RunConfig) -> RunSession:
    """The session of `config.name` in this process, built on first use (or when the config changed)."""
    if config.name is None:
        raise RunError("a run needs a name before it can be opened")
    with _sessions_lock:
        session = _sessions.get(config.name)
        if session is None or session.config != config:
            if session is not None:
                session.evaluation.runner.close()
            session = _sessions[config.name] = RunSession(config)
        return session


def close_sessions() -> None:
    """Forget every open session (tests, and a CLI that starts several runs in one process)."""
    with _sessions_lock:
        for session in _sessions.values():
            session.evaluation.runner.close()
        _sessions.clear()


class Evaluation:
    """A dataset under one evaluation protocol: the sandbox runner and the host-side scoring."""

    def __init__(self, config: RunConfig, run_id: str, cache_dir: Path | None = None) -> None:
        self.config = config
        self.panel = load_panel(config.dataset)
        self.symbols = self.panel.get_column("symbol").unique().sort().to_list()
        if config.eval.scheme == "cross_sectional" and len(self.symbols) < 2:
            raise RunError(
                f"{config.dataset} has one symbol: the cross_sectional scheme needs at least two; "
                "use the per_asset scheme or a multi-symbol dataset"
            )
        self.interval = detect_interval(self.panel)
        self.runner = SandboxRunner(
            self.panel,
            config.eval,
            config.sandbox,
            cache_dir or config.runs_dir / "cache",
            seed=config.seed,
            run_id=run_id,
        )
        self.plan = self.runner.plan
        self.reward_panel = reward_panel(self.panel, self.plan)

    def score(self, result: ExecutionResult) -> Metrics | None:
        """Host-side metrics of an executed experiment on the reward window (None when it failed)."""
        if not result.ok:
            return None
        predictions = self.runner.predictions(result)
        return score_predictions(predictions, self.reward_panel, self.config.eval, bar_interval=self.interval)

    def score_holdout(self, spec: ExperimentSpec) -> tuple[ExecutionResult, Metrics | None]:
        """Train on the whole reward window, predict the holdout, score it. For reports only, never rewards."""
        result = self.runner.run_holdout(spec)
        if not result.ok:
            return result, None
        holdout = self.panel.filter(pl.col("timestamp") >= self.plan.holdout_start)
        predictions = self.runner.predictions(result)
        return result, score_predictions(predictions, holdout, self.config.eval, bar_interval=self.interval)


class RunSession:
    """Everything one run holds, built once; `next_cycle` is where a resumed run continues."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.name: str = config.name or ""
        runs = config.runs_dir
        fresh = self._remember_config(run_config_path(runs, self.name))
        if config.sandbox.executor == "docker":
            reap_containers(run_id=self.name)  # a crashed earlier attempt of this run may have left some
        self.evaluation = Evaluation(config, run_id=self.name)
        self.plan = self.evaluation.plan
        self.prompt = render_prompt(
            config.prompt_version, OHLCV_COLUMNS, self.evaluation.interval, config.eval.horizon, self.evaluation.symbols
        )

        self.buffer = ReplayBuffer(runs)
        self.policy = load_policy(config.policy, seed=config.seed)
        if config.policy.backend == "vllm":  # vLLM holds its own copy of the base; it follows the saved adapters
            self.generator = make_generator(config.policy)
        else:  # the transformers backend samples the policy being trained
            tokenizer = AutoTokenizer.from_pretrained(config.policy.model)
            self.generator = make_generator(config.policy, model=self.policy.model, tokenizer=tokenizer)
        self.trainer = PPOTrainer(self.policy, config.ppo, seed=config.seed)
        self.checkpoints = Checkpoints(runs, self.name)
        last = self.checkpoints.load_latest(self.trainer)
        self.next_cycle = 0 if last is None else last + 1
        self._sample_from(None if last is None else self.checkpoints.path(last))

        self.tracker = Tracker(runs, config.tracking_uri)
        self.tracker.start(
            config,
            self.name,
            fresh=fresh,
            artifacts={"prompts": PROMPTS_DIR / f"{config.prompt_version}.j2", "data": card_path(config.dataset)},
        )
        self._phase_started: dict[int, float] = {}
        self._timings: dict[int, dict[str, float]] = {}
        self._summaries: dict[int, dict[str, float]] = {}

    # ---- pacing -------------------------------------------------------------------------

    def describe(self) -> str:
        start = "starting" if self.next_cycle == 0 else f"resuming at cycle {self.next_cycle}"
        return (
            f"run {self.name}: {start}, {self.config.cycles} cycles × {self.config.batch_size} experiments on "
            f"{self.config.dataset} ({len(self.evaluation.symbols)} symbols, "
            f"reward window to {self.plan.reward_end:%Y-%m-%d}); "
            f"MLflow: {self.tracker.run_url_hint}"
        )

    def pending_cycles(self) -> list[int]:
        return list(range(self.next_cycle, self.config.cycles))

    def finish(self) -> None:
        self.evaluation.runner.close()
        self.tracker.finish()

    # ---- the steps of a cycle -------------------------------------------------------------

    def generate(self, cycle: int) -> list[Generation]:
        """Sample the cycle's batch; seeded by (run seed, cycle) so a repeated cycle samples the same."""
        for listener in listeners:
            listener.cycle_started(self.name, cycle, self.config.cycles, self.config.batch_size)
        started = time.perf_counter()
        prompts = [self.prompt] * self.config.batch_size
        generations = self.generator.generate(prompts, seed=self.config.seed * 1_000_003 + cycle)
        self._timings[cycle] = {"generate": time.perf_counter() - started}
        self._phase_started[cycle] = time.perf_counter()
        return generations

    def execute(self, generation: Generation) -> Outcome:
        """Static checks, then the sandbox. A failing experiment is an Outcome; infrastructure faults raise."""
        try:
            spec = check_completion(generation.completion, OHLCV_COLUMNS)
        except SpecError as exc:
            return Outcome(spec=None, error_class=exc.error_class, message=str(exc))
        return Outcome(spec=spec, result=self.evaluation.runner.run(spec))

    def experiment_done(self, cycle: int, outcome: Outcome) -> None:
        """Tell the progress listeners (called by whoever collects the fanned-out executions)."""
        for listener in listeners:
            listener.experiment_done(cycle, outcome)

    def score(self, cycle: int, generations: Sequence[Generation], outcomes: Sequence[Outcome]) -> list[Experience]:
        """Score every outcome on the host, shape rewards, and deflate Sharpes by the run's trials so far."""
        started = time.perf_counter()
        timings = self._timings.setdefault(cycle, {})
        timings["execute"] = started - self._phase_started.get(cycle, started)
        metrics = [self.evaluation.score(o.result) if o.result else None for o in outcomes]
        sharpes = self._earlier_sharpes(cycle) + [m.sharpe_net for m in metrics if m is not None and m.valid]
        variance = statistics.pvariance(sharpes) if len(sharpes) > 1 else 0.0
        metrics = [deflate(m, len(sharpes), variance) if m is not None else None for m in metrics]
        experiences = [
            self._experience(cycle, index, generation, outcome, m)
            for index, (generation, outcome, m) in enumerate(zip(generations, outcomes, metrics, strict=True))
        ]
        timings["score"] = time.perf_counter() - started
        return experiences

    def log(self, cycle: int, experiences: Sequence[Experience]) -> dict[str, float]:
        """Persist the cycle to the replay buffer and MLflow; returns the cycle's summary metrics."""
        started = time.perf_counter()
        self.buffer.write(self.name, cycle, experiences)
        summary = cycle_summary(experiences) | {f"time_{k}": v for k, v in self._timings.get(cycle, {}).items()}
        self.tracker.log_cycle(cycle, summary, list(experiences))
        self._timings.setdefault(cycle, {})["log"] = time.perf_counter() - started
        self._summaries[cycle] = summary
        return summary

    def update(self, cycle: int, experiences: Sequence[Experience]) -> dict[str, float]:
        """The PPO step, then the checkpoint that commits the cycle; returns the update's stats."""
        started = time.perf_counter()
        stats = asdict(self.trainer.update(experiences))
        path = self.checkpoints.save(self.trainer, cycle)
        self._sample_from(path)
        elapsed = time.perf_counter() - started
        logged = {f"ppo_{k}": v for k, v in stats.items()} | {"time_update": elapsed}
        self.tracker.log_metrics(cycle, logged)
        self.tracker.log_artifacts(path / "adapter", f"adapter/cycle-{cycle:03d}")
        self.next_cycle = cycle + 1
        for listener in listeners:
            listener.cycle_finished(cycle, self._summaries.pop(cycle, {}) | logged)
        return logged

    # ---- the post-mortem -------------------------------------------------------------------

    def evaluate_holdout(self, top_n: int = 10) -> pl.DataFrame:
        """Score the run's best distinct experiments on the final holdout (for the report; never a reward).

        Selection is by in-sample net Sharpe, so the report can show how much of it survives.
        """
        frame = self.buffer.frame(run=self.name)
        if frame.is_empty() or "metric_sharpe_net" not in frame.columns:
            return pl.DataFrame()
        best = (
            frame.filter(pl.col("error_class").is_null())
            .sort("metric_sharpe_net", descending=True)
            .unique("code_hash", keep="first", maintain_order=True)
            .head(top_n)
        )
        rows = []
        for row in best.iter_rows(named=True):
            result, metrics = self.evaluation.score_holdout(ExperimentSpec.model_validate_json(row["spec_json"]))
            values = _numbers(metrics) if metrics is not None and metrics.valid else {}
            rows.append(
                {"run": self.name, "cycle": row["cycle"], "index": row["index"]}
                | {f"metric_holdout_{k}": v for k, v in values.items()}
                | {"holdout_status": "ok" if values else str(result.error_class or metrics.reason)}
            )
        table = pl.DataFrame(rows)
        write_holdout(self.config.runs_dir, self.name, table)
        return table

    # ---- helpers --------------------------------------------------------------------------

    def _sample_from(self, checkpoint: Path | None) -> None:
        """Point a vLLM generator at the checkpoint's adapter (None: the base policy)."""
        if self.config.policy.backend == "vllm":
            self.generator.set_adapter(None if checkpoint is None else checkpoint / "adapter")

    def _earlier_sharpes(self, cycle: int) -> list[float]:
        frame = self.buffer.frame(run=self.name)
        if frame.is_empty() or "metric_sharpe_net" not in frame.columns:
            return []
        earlier = frame.filter((frame["cycle"] < cycle) & frame["error_class"].is_null())
        return earlier.get_column("metric_sharpe_net").drop_nulls().to_list()

    def _experience(
        self, cycle: int, index: int, generation: Generation, outcome: Outcome, metrics: Metrics | None
    ) -> Experience:
        error, message = outcome_error(outcome, metrics)
        classification = classify(outcome.spec) if outcome.spec is not None else None
        result = outcome.result
        return Experience.from_generation(
            generation,
            run=self.name,
            cycle=cycle,
            index=index,
            prompt_version=self.config.prompt_version,
            spec_json=outcome.spec.model_dump_json() if outcome.spec else None,
            name=outcome.spec.name if outcome.spec else None,
            model_family=classification.model_family if classification else None,
            custom_features=classification.custom_features if classification else None,
            error_class=error,
            error_message=message,
            metrics=_numbers(metrics) if metrics is not None and metrics.valid else {},
            reward=shape_reward(metrics if error is None and metrics is not None else error, self.config.reward),
            code_hash=outcome.spec.code_hash if outcome.spec else None,
            cache_key=result.cache_key if result else None,
            timings=dict(result.timings) if result else {},
        )

    def _remember_config(self, path: Path) -> bool:
        """Refuse to resume a run under other settings (only `cycles` may grow); True for a run starting afresh."""
        current = self.config.model_dump(mode="json", exclude={"cycles"})
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != current:
                changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
                raise RunError(
                    f"run {self.name} was started with other settings ({', '.join(changed)} differ); "
                    "resume it with the same settings, or start a new run with another --name"
                )
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2))
        return True


def outcome_error(outcome: Outcome, metrics: Metrics | None) -> tuple[ErrorClass | None, str | None]:
    """The error class and message of an outcome: a static-check failure, a sandbox failure, or unscorable output."""
    if outcome.error_class is not None:
        return outcome.error_class, outcome.message
    result = outcome.result
    if result is not None and not result.ok:
        return result.error_class, result.message
    if metrics is not None and not metrics.valid:
        return metrics.error_class, metrics.message
    return None, None


def _numbers(metrics: Metrics) -> dict[str, float | None]:
    return {
        key: float(value) if value is not None else None
        for key, value in metrics.model_dump(exclude={"valid", "reason", "message"}).items()
    }


def cycle_summary(experiences: Sequence[Experience]) -> dict[str, float]:
    """A cycle's headline numbers for MLflow: rewards, Sharpe, failure rates, model-family entropy."""
    n = len(experiences)
    rewards = [e.reward for e in experiences]
    sharpes = [e.metrics["sharpe_net"] for e in experiences if e.error_class is None and "sharpe_net" in e.metrics]
    summary = {
        "reward_mean": statistics.fmean(rewards),
        "reward_median": statistics.median(rewards),
        "reward_max": max(rewards),
        "ok_rate": sum(e.error_class is None for e in experiences) / n,
    }
    if sharpes:
        summary |= {
            "sharpe_mean": statistics.fmean(sharpes),
            "sharpe_median": statistics.median(sharpes),
            "sharpe_max": max(sharpes),
        }
    failures = Counter(e.error_class for e in experiences if e.error_class is not None)
    summary |= {f"failure_rate_{error.value}": failures.get(error, 0) / n for error in ErrorClass}
    families = Counter(e.model_family for e in experiences if e.model_family)
    total = sum(families.values())
    summary["family_entropy"] = -sum(c / total * log2(c / total) for c in families.values()) if total else 0.0
    customs = [e.custom_features for e in experiences if e.custom_features is not None]
    summary["custom_feature_share"] = sum(customs) / len(customs) if customs else 0.0
    return summary
