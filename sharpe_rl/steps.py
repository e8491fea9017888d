"""The steps of an RL run, as plain functions whose arguments name everything their result depends on.

A cycle reads its past once, `history.read_history(runs_dir, run, cycle) -> History` (the replay buffer's
cycles before it), then is generate → execute → score → log → update:

- `cycle_prompts(run, cycle, history)` then `policy.learner.generate(policy_ref, prompts, cycle=, seed=) -> Batch`:
  `ppo.group_size` completions per prompt, so a group baseline compares completions of one prompt; the
  prompts' elites come from the history's archive
- `evaluation.evaluate(completion, evaluation_ref) -> Outcome`, once per completion, anywhere
  (a thread, another process, a Dask worker on another machine): no policy, no MLflow, no buffer
- `score(run, batch, executions, history) -> Scored`: host-side rewards, given the history: the DSR
  and, when configured, the reward deflated by the trials so far (`RewardConfig.luck_correction`),
  the novelty bonus and the copy penalty (`sharpe_rl.diversity`)
- `log(run, scored, timings, history) -> Logged`: the replay buffer, the quality-diversity archive
  (the history's, with this cycle folded in), then MLflow (the cycle's summary counts the history)
- `policy.learner.update(policy_ref, cycle, experiences) -> Update` (its checkpoint commits the
  cycle), then `log_update(run, update, logged)`

So a cycle's steps read no state but the values they are given (the dataset an `EvaluationRef` names, the
weights a `PolicyRef` names): they run the same on a thread or a Dask worker, and Prefect's inputs say what
their results depend on. They write what they persist (buffer, archive, checkpoint, MLflow). The steps that
open and close a run (`start`, `holdout_candidates`, `carry_over`, `finish`) run once and do read what the
run stored.

`start(config) -> RunRef` opens a run once: it checks the settings against those the run was
started with, the dataset, and the policy, starts (or finds) the MLflow parent run, and says
where the run resumes. A `RunRef` is plain data: the flow hands it to every step, so no step
reaches for state a previous step left in memory. Each step returns what the next needs, and the
timings the progress display and MLflow show.

Resume: a cycle is committed by its checkpoint, written last. Everything before it is either
cached (executions, by content hash) or idempotent (the buffer file of a cycle is replaced, the
archive keeps the best per cell whatever it is offered twice, MLflow writes are keyed by cycle and
index), and generation is seeded by (run seed, cycle) from the previous checkpoint's weights. What
a cycle knows of the run's past (the prompts' elites, the trials and visits its rewards count, the
archive it extends) is its `History`: the buffer's cycles before it, never the state a killed
attempt of the same cycle left behind.
So a run killed anywhere in a cycle repeats that cycle exactly on resume, and nothing is lost or
written twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.analysis.tables import HOLDOUT_SHARPE, annotate, cycle_metrics
from sharpe_rl.archive import EliteArchive, save_archive
from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.classify import classify
from sharpe_rl.config import RunConfig
from sharpe_rl.credit import family_credit
from sharpe_rl.data.atomic import write_bytes_atomic
from sharpe_rl.data.card import card_path
from sharpe_rl.diversity import diversity_rewards
from sharpe_rl.evaluation import EvaluationRef, Outcome, close_evaluation, load_evaluation, metric_numbers
from sharpe_rl.experience import Experience
from sharpe_rl.facts import RunFacts, load_facts, save_facts
from sharpe_rl.history import History
from sharpe_rl.holdout import report_frame, write_holdout
from sharpe_rl.noskill import NoSkillBand
from sharpe_rl.policy import learner
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.policy.generation import Generation, policy_source, row_seed
from sharpe_rl.policy.knowledge import policy_knowledge
from sharpe_rl.policy.learner import Batch, PolicyRef, Update
from sharpe_rl.policy.prompts import PROMPTS_DIR, run_prompt, shows_elites
from sharpe_rl.sandbox import InfrastructureError
from sharpe_rl.sandbox.docker_executor import ENGINE_ERRORS, reap_containers
from sharpe_rl.scoring import DegeneratePredictions, backtest, deflate, reward_cap_sharpe
from sharpe_rl.selection import Selection, agreement, probability_of_backtest_overfitting
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


#: Fresh seeds are drawn below this: short enough to read off a log line and type back in.
FRESH_SEEDS = 1_000_000


def choose_seed(runs_dir: Path, run: str, seed: int | None) -> tuple[int, str]:
    """The seed run `run` starts with, and why: the one given; an unfinished run's own when it resumes; else fresh.

    A fresh seed makes running again explore: with one fixed default, a second run's first cycle samples the same
    completions from the same base policy, and every execution comes back from the cache. The seed is recorded
    with the run's settings (and in MLflow), so giving it again reproduces the run.
    """
    if seed is not None:
        return seed, "given"
    saved = run_config_path(runs_dir, run)
    if saved.is_file():
        return RunConfig.model_validate_json(saved.read_text()).seed, "the run's own, resuming"
    return secrets.randbelow(FRESH_SEEDS), "fresh"


class RunRef(BaseModel):
    """A started run, as values: what every step after `start` needs to know about it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: RunConfig
    evaluation: EvaluationRef
    prompt: str
    parent_run_id: str
    mlflow_url: str  # the parent run's page in the MLflow UI
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
    learned: list[float] | None = None  # what the update learns from when not the rewards (`PPOConfig.credit`)


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
    evaluation = EvaluationRef.for_run(config, runs, name)
    dataset = load_evaluation(evaluation)
    if config.eval.scheme == "cross_sectional" and len(dataset.symbols) < 2:
        raise RunError(
            f"{config.dataset} has one symbol: the cross_sectional scheme needs at least two; "
            "use the per_asset scheme or a multi-symbol dataset"
        )
    if config.task_runner.kind == "threads":
        _reap_local_containers(name)  # a crashed earlier attempt of this run may have left some
    prompt = run_prompt(config, dataset.interval, dataset.symbols)
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
        f"executions on {_where_executions_run(config)}; seed {config.seed}\nMLflow: {tracker.run_address}\n"
        f"point-in-time: {dataset.workload()}\n{dataset.noskill.sentence()} (net Sharpe on the reward folds; "
        f"its noise, {dataset.noskill.sigma:.2f}, is the unit of the evidence reward)"
    )
    warning = dataset.noskill.warning(reward_cap_sharpe(config.reward))
    if warning:
        description += f"\n{warning}"
    knowledge = policy_knowledge(config.policy)
    facts = RunFacts(
        noskill=dataset.noskill,
        knowledge=knowledge.text,
        cutoff=knowledge.cutoff,
        memory=knowledge.memory,
        reward_start=dataset.plan.reward_start,
        reward_end=dataset.plan.reward_end,
        holdout_start=dataset.plan.holdout_start,
        holdout_end=dataset.plan.holdout_end,
        symbols_named=config.name_symbols,
        clock=dataset.clock.describe(),
    )
    save_facts(runs, name, facts)
    band = dataset.noskill
    Tracker(runs, config.tracking_uri, parent_run_id=parent).log_metrics(
        0, {"noskill_band_lo": band.lo, "noskill_band_hi": band.hi, "noskill_sigma": band.sigma}
    )
    description += f"\nholdout: {facts.holdout_words()}"
    return RunRef(
        config=config,
        evaluation=evaluation,
        prompt=prompt,
        parent_run_id=parent,
        mlflow_url=tracker.run_url,
        policy=policy,
        description=description,
    )


def finish(run: RunRef, *, failed: bool = False) -> None:
    """Close the run: its MLflow parent FINISHED (or FAILED), its policy out of memory, its containers gone.

    Closing a failed run never raises: what made it fail is the error to show, not a cleanup's.
    """
    learner.release(run.name)
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


# ---- the cycle's prompts --------------------------------------------------------------------

#: Elites a `v6_inspiration` prompt shows: two, so that the prompt and a completion still fit the
#: tiny policy's context (each elite is a whole experiment, 150-400 tokens).
INSPIRATION_ELITES = 2


def group_sizes(batch_size: int, group_size: int) -> list[int]:
    """How many completions each prompt of a cycle gets: `batch_size // group_size` prompts (at least one),
    `group_size` completions each, the remainder spread one by one over the first prompts."""
    prompts = max(1, batch_size // group_size)
    return [batch_size // prompts + (group < batch_size % prompts) for group in range(prompts)]


def cycle_prompts(run: RunRef, cycle: int, history: History) -> list[str]:
    """The prompt of each completion of the cycle's batch, a group of `ppo.group_size` consecutive ones per prompt.

    A prompt version that shows elites (`v6_inspiration`) gets, per group, its own seeded draw of
    `INSPIRATION_ELITES` elites of the archive as it stood after the previous cycle (the history's,
    so a resumed cycle draws the same); groups differ by their elites. Any other version renders
    the same prompt for every group: the groups differ only by their seeds.
    """
    _check_history(run, cycle, history)
    config = run.config
    sizes = group_sizes(config.batch_size, config.ppo.group_size)
    if shows_elites(config.prompt_version):
        archive = history.archive()
        dataset = load_evaluation(run.evaluation)
        seed = generation_seed(run, cycle)
        texts = [
            run_prompt(
                config,
                dataset.interval,
                dataset.symbols,
                elites=archive.inspiration(INSPIRATION_ELITES, seed=row_seed(seed, group)),
            )
            for group in range(len(sizes))
        ]
    else:
        texts = [run.prompt] * len(sizes)
    return [text for text, size in zip(texts, sizes, strict=True) for _ in range(size)]


# ---- score, log -----------------------------------------------------------------------------


def score(run: RunRef, batch: Batch, executions: Executions, history: History) -> Scored:
    """Rewards for a cycle's outcomes, given the run's earlier cycles (`history`).

    Every DSR is deflated by the run's trials so far (earlier cycles and this batch); the reward
    also is when `RewardConfig.luck_correction` says so; then the diversity terms (novelty bonus,
    copy penalty) count the earlier cycles' visits and programs, when their weights are not 0. With
    `PPOConfig.credit` "family", the update learns from each family's evidence so far (`credit.family_credit`).
    """
    started = time.perf_counter()
    _check_history(run, batch.cycle, history)
    sharpes = history.net_sharpes() + [o.metrics.sharpe_net for o in executions.outcomes if o.metrics is not None]
    trials = Trials(n=len(sharpes), sharpe_variance=statistics.pvariance(sharpes) if len(sharpes) > 1 else 0.0)
    noskill = load_evaluation(run.evaluation).noskill
    experiences = [
        _experience(run, batch.cycle, index, generation, outcome, trials, noskill)
        for index, (generation, outcome) in enumerate(zip(batch.generations, executions.outcomes, strict=True))
    ]
    reward_cfg = run.config.reward
    if reward_cfg.novelty_weight or reward_cfg.copy_penalty:  # both 0: the terms change nothing, skip the classifier
        rewards = diversity_rewards(experiences, history.visits(), reward_cfg)
        experiences = [e.model_copy(update={"reward": r}) for e, r in zip(experiences, rewards, strict=True)]
    ppo = run.config.ppo
    learned = (
        family_credit(history.through(experiences), experiences, ppo.credit_prior) if ppo.credit == "family" else None
    )
    return Scored(cycle=batch.cycle, experiences=experiences, seconds=time.perf_counter() - started, learned=learned)


@dataclass(frozen=True)
class Trials:
    """The run's scored experiments so far, as selection bias sees them: how many, and how their Sharpe ratios vary."""

    n: int
    sharpe_variance: float  # of the annualised net Sharpe ratios


def _check_history(run: RunRef, cycle: int, history: History) -> None:
    """A step of cycle `cycle` is handed the history of that cycle of that run, or refuses to compute."""
    if (history.run, history.cycle) != (run.name, cycle):
        raise ValueError(
            f"cycle {cycle} of run {run.name} was handed the history of run {history.run} before cycle "
            f"{history.cycle}: read the cycle's own with read_history(runs_dir, {run.name!r}, {cycle})"
        )


def log(run: RunRef, scored: Scored, timings: Mapping[str, float], history: History) -> Logged:
    """Persist the cycle to the replay buffer and the archive, then MLflow (which may be down: it catches up later).

    The archive and the cycle's summary count the run's earlier cycles (`history`) and this one. When the update
    learns from something other than the rewards (`PPOConfig.credit`), the summary has its mean (`credit_mean`).
    """
    started = time.perf_counter()
    _check_history(run, scored.cycle, history)
    ReplayBuffer(run.config.runs_dir).write(run.name, scored.cycle, scored.experiences)
    archive = update_archive(run, scored, history)
    run_so_far = history.through(scored.experiences)
    summary = (
        cycle_metrics(annotate(run_so_far), scored.cycle)
        | {"archive_coverage_pct": 100 * archive.coverage, "qd_score": archive.qd_score}
        | ({"credit_mean": statistics.fmean(scored.learned)} if scored.learned is not None else {})
        | {f"time_{k}": v for k, v in timings.items()}
    )
    run.tracker().log_cycle(scored.cycle, summary, scored.experiences)
    return Logged(cycle=scored.cycle, summary=summary, seconds=time.perf_counter() - started)


def update_archive(run: RunRef, scored: Scored, history: History) -> EliteArchive:
    """Fold the cycle into the archive of the earlier cycles (`history`'s) and save it as the run's; returns it.

    A resumed cycle saves the archive its killed attempt saved; a stored archive that lacks some
    earlier cycle (a run from before the archive, a file lost) is replaced by a whole one.
    """
    archive = history.archive()
    archive.add(scored.cycle, scored.experiences)
    save_archive(run.config.runs_dir, archive)
    return archive


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


def holdout_candidates(run: RunRef, top_n: int = 10, sample_n: int = 10) -> list[Candidate]:
    """The run's best distinct experiments by in-sample net Sharpe (so the report shows how much survives), then a
    seeded random sample of `sample_n` of the others (so the reward–holdout agreement is not measured on the top
    alone)."""
    frame = ReplayBuffer(run.config.runs_dir).frame(run=run.name)
    if frame.is_empty() or "metric_sharpe_net" not in frame.columns:
        return []
    distinct = (
        frame.filter(pl.col("error_class").is_null() & pl.col("metric_sharpe_net").is_not_null())
        .sort("metric_sharpe_net", descending=True)
        .unique("code_hash", keep="first", maintain_order=True)
    )
    rest = distinct.slice(top_n)
    sample = rest.sample(min(sample_n, rest.height), seed=run.config.seed) if rest.height else rest
    return [
        Candidate(row["cycle"], row["index"], ExperimentSpec.model_validate_json(row["spec_json"]))
        for row in pl.concat([distinct.head(top_n), sample]).iter_rows(named=True)
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


def carry_over(run: RunRef) -> Selection:
    """Whether the run's reward carries over to the holdout: agreement and PBO, kept in its facts and in MLflow."""
    frame = report_frame(run.config.runs_dir, run.name)
    scored = frame.filter(pl.col("error_class").is_null()) if "error_class" in frame.columns else frame
    both = scored.filter(pl.col(HOLDOUT_SHARPE).is_not_null()) if HOLDOUT_SHARPE in scored.columns else scored.clear()
    agreed = agreement(both["metric_sharpe_net"].to_numpy(), both[HOLDOUT_SHARPE].to_numpy(), seed=run.config.seed)
    returns = _reward_window_returns(run, scored)
    selection = Selection(
        agreement=agreed,
        pbo=probability_of_backtest_overfitting(returns) if returns is not None else None,
        pbo_experiments=0 if returns is None else returns.shape[1],
    )
    facts = load_facts(run.config.runs_dir, run.name)
    if facts is not None:
        save_facts(run.config.runs_dir, run.name, facts.model_copy(update={"selection": selection}))
    last = Checkpoints(run.config.runs_dir, run.name).latest_cycle()
    if selection.metrics() and last is not None:
        run.tracker().log_metrics(last, selection.metrics())
    return selection


def _reward_window_returns(run: RunRef, scored: pl.DataFrame) -> np.ndarray | None:
    """Per-bar net returns on the reward folds of each distinct scored experiment (bars × experiments)."""
    if scored.is_empty() or "cache_key" not in scored.columns:
        return None
    evaluation = load_evaluation(run.evaluation)
    columns = []
    for key in scored.unique("code_hash", keep="first", maintain_order=True)["cache_key"].drop_nulls():
        result = evaluation.runner.cached(key)
        if result is None or result.predictions_path is None:
            continue
        try:
            book = backtest(evaluation.runner.predictions(result), evaluation.reward_panel, run.config.eval)
        except DegeneratePredictions:
            continue
        columns.append(book.returns["net_return"].to_numpy())
    if len(columns) < 2 or len({len(c) for c in columns}) != 1:
        return None
    return np.column_stack(columns)


# ---- helpers --------------------------------------------------------------------------------


def _experience(
    run: RunRef,
    cycle: int,
    index: int,
    generation: Generation,
    outcome: Outcome,
    trials: Trials,
    noskill: NoSkillBand,
) -> Experience:
    metrics = deflate(outcome.metrics, trials.n, trials.sharpe_variance) if outcome.metrics is not None else None
    numbers = metric_numbers(metrics) if metrics is not None and outcome.ok else {}
    if numbers:  # the net Sharpe in units of this panel's no-skill noise (what the evidence reward pays for)
        numbers["evidence"] = noskill.evidence(metrics.sharpe_net)
    spec, result = outcome.spec, outcome.result
    try:
        classification = classify(spec) if spec is not None else None
    except Exception:  # a classifier bug costs this experiment its labels, never the cycle
        logger.exception("could not classify experiment %d of cycle %d", index, cycle)
        classification = None
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
        metrics=numbers,
        reward=outcome.reward(
            run.config.reward,
            noskill_sigma=noskill.sigma,
            n_trials=trials.n,
            trials_sharpe_variance=trials.sharpe_variance,
        ),
        code_hash=spec.code_hash if spec else None,
        cache_key=result.cache_key if result else None,
        cached=result.cached if result else None,
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
