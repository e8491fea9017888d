"""Is the learning real? The base policy and a run's final checkpoint, sampled alike, executed, compared.

A run's rewards are in-sample and selected: the best of hundreds of noisy Sharpe ratios looks good
by luck alone. This module answers the user's question with fresh samples instead. It draws N
completions (N >= 64) from the base policy and N from the run's latest checkpoint, with the same
prompt and the same seeds (completion i of both comes from the same random stream), executes every
one in the sandbox exactly as the run does (`evaluate`, on the reward window) and, for those that
ran, on the final holdout (`evaluate_holdout`, trained on the whole reward window), and compares
the two policies on both windows:

- **run share**: the share of the N completions that ran and were scored;
- **mean net Sharpe**: the mean annualised net Sharpe of those that ran (the pass@1 analogue; a
  failure has no Sharpe, and counting it as 0 would flatter a policy that fails more whenever the
  typical Sharpe is negative: the run share shows failures);
- **best-of-16 DSR**: in each consecutive block of 16 completions, the deflated Sharpe ratio of
  the one with the best net Sharpe, deflated for a selection among the block's scored experiments
  (their count and the variance of their Sharpe ratios), averaged over the blocks (the pass@16
  analogue: what a user who tries 16 and keeps the best can expect, luck discounted); a block
  with nothing scored counts 0;
- **family entropy**: the Shannon entropy (bits) of the model families of those that ran.

Each difference (final - base) carries a 95% paired bootstrap confidence interval: the N pairs
(completion i of both policies) are resampled with replacement, `resamples` times, and the
statistics recomputed on each resample. The best-of-16 DSR resamples its unit instead, the pairs of
blocks (block j of both policies): it is a mean over blocks, and completions resampled one by one
would be dealt into blocks unlike any the policies wrote (a block with copies of one completion, the
best ones spread thin), a bias that can put the whole interval on one side of the observed
difference. An interval that contains 0 is a difference the sample cannot tell from noise.

The prompt is the run's prompt version rendered without elites (for `v6_inspiration` runs the
same text as `v5_rules`): both policies get the same one. The seed (`EVALUATION_SEED` by default)
is not one a training cycle used. Executions go through the run's result cache, so an experiment
the run already executed is not executed again. The comparison is saved at
`runs/evaluations/<run>.json` with one row per completion at `runs/evaluations/<run>.parquet`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.classify import classify
from sharpe_rl.config import TaskRunnerConfig
from sharpe_rl.data.atomic import atomic_path, write_bytes_atomic
from sharpe_rl.evaluation import EvaluationRef, Outcome, load_evaluation, metric_numbers
from sharpe_rl.facts import comparison_path
from sharpe_rl.policy import learner
from sharpe_rl.policy.learner import PolicyRef
from sharpe_rl.sampling import SamplingError, run_policy
from sharpe_rl.scoring import deflated_sharpe_ratio

#: The sampling seed of an evaluation: far from any training cycle's (`steps.generation_seed`).
EVALUATION_SEED = 987_654_321
#: Completions per block of the best-of-k statistic (the pass@k analogue).
BEST_OF = 16
#: The smallest sample that makes the comparison worth reading: four blocks of 16.
MIN_SAMPLES = 64

Which = Literal["base", "final"]
WINDOWS = ("reward", "holdout")
BEST_OF_STATISTIC = f"best_of_{BEST_OF}_dsr"
STATISTICS = ("run_share", "mean_sharpe", BEST_OF_STATISTIC, "family_entropy_bits")
_MOMENTS = ("sharpe_net", "n_bars", "periods_per_year", "skewness", "kurtosis")


class ComparisonError(ValueError):
    """The comparison cannot be made as asked; the message says what to do."""


class ComparisonPlan(BaseModel):
    """What an evaluation of `run` samples and executes: the two policies, the prompt, the seed, the sandbox."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run: str
    runs_dir: Path
    n: int
    seed: int
    prompt: str
    evaluation: EvaluationRef
    task_runner: TaskRunnerConfig  # where the executions run: the run's own setting
    tracking_uri: str | None = None  # the run's MLflow store, where its post-mortem is attached again
    base: PolicyRef
    final: PolicyRef

    def policy(self, which: Which) -> PolicyRef:
        return self.base if which == "base" else self.final


def plan_comparison(runs_dir: Path, run: str, n: int = MIN_SAMPLES, seed: int = EVALUATION_SEED) -> ComparisonPlan:
    """The comparison of `run`'s base policy and latest checkpoint, from the settings the run was started with."""
    if n < MIN_SAMPLES:
        raise ComparisonError(f"--n {n} is too few to compare: use at least {MIN_SAMPLES} (four blocks of {BEST_OF})")
    try:
        policy = run_policy(runs_dir, run)
    except SamplingError as exc:
        raise ComparisonError(str(exc)) from None
    if policy.latest.cycle is None:
        raise ComparisonError(f"run {run} has no checkpoint yet: run at least one cycle before comparing")
    evaluation = EvaluationRef.for_run(policy.config, runs_dir, run)
    load_evaluation(evaluation)  # the dataset and its evaluation plan, checked before anything is sampled
    return ComparisonPlan(
        run=run,
        runs_dir=runs_dir,
        n=n,
        seed=seed,
        prompt=policy.prompt,
        evaluation=evaluation,
        task_runner=policy.config.task_runner,
        tracking_uri=policy.config.tracking_uri,
        base=policy.base,
        final=policy.latest,
    )


def sample(plan: ComparisonPlan, which: Which) -> list[str]:
    """The `plan.n` completions of one policy: the plan's prompt, the plan's seed."""
    batch = learner.generate(plan.policy(which), [plan.prompt] * plan.n, cycle=plan.final.cycle, seed=plan.seed)
    return [generation.completion for generation in batch.generations]


def sample_frame(
    plan: ComparisonPlan, completions: Sequence[str], outcomes: Sequence[Outcome], holdouts: Sequence[dict | None]
) -> pl.DataFrame:
    """The comparison's sample, one `sample_record` row per completion: the base policy's `plan.n`, then the final's."""
    rows = [
        sample_record("base" if i < plan.n else "final", i % plan.n, completion, outcome, holdout)
        for i, (completion, outcome, holdout) in enumerate(zip(completions, outcomes, holdouts, strict=True))
    ]
    return pl.DataFrame(rows, infer_schema_length=None)


def sample_record(
    which: Which, index: int, completion: str, outcome: Outcome, holdout: dict[str, Any] | None
) -> dict[str, Any]:
    """One row of the comparison's sample: the completion's outcome on both windows (holdout: None when not run)."""
    try:
        family = classify(outcome.spec).model_family if outcome.spec is not None else None
    except Exception:  # a classifier bug costs the row its label, not the evaluation
        family = None
    reward = metric_numbers(outcome.metrics) if outcome.ok and outcome.metrics is not None else {}
    holdout = holdout or {}
    return (
        {"policy": which, "index": index, "completion": completion, "status": outcome.status, "family": family}
        | {f"reward_{k}": reward.get(k) for k in (*_MOMENTS, "turnover")}
        | {"holdout_status": holdout.get("holdout_status")}
        | {f"holdout_{k}": holdout.get(f"metric_holdout_{k}") for k in (*_MOMENTS, "turnover")}
    )


# ---- the statistics -------------------------------------------------------------------------


def window_statistics(rows: pl.DataFrame, window: str) -> dict[str, float]:
    """The four statistics of one policy's sample (in index order) on one window."""
    return _statistics(_arrays(rows, window))


def _arrays(rows: pl.DataFrame, window: str) -> dict[str, np.ndarray]:
    """A sample's columns for one window as arrays (NaN where not scored), with the families."""
    arrays = {k: rows[f"{window}_{k}"].cast(pl.Float64).fill_null(np.nan).to_numpy() for k in _MOMENTS}
    return arrays | {"family": np.array(rows["family"].to_list(), dtype=object)}


def _statistics(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    return _completion_statistics(arrays) | {BEST_OF_STATISTIC: best_of_k_dsr(arrays, BEST_OF)}


def _completion_statistics(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The statistics whose unit is one completion (the best-of-k one's is a block of k)."""
    sharpe = arrays["sharpe_net"]
    scored = ~np.isnan(sharpe)
    families = [f for f in arrays["family"][scored] if f is not None]
    return {
        "run_share": float(scored.mean()) if len(scored) else math.nan,
        "mean_sharpe": float(sharpe[scored].mean()) if scored.any() else math.nan,
        "family_entropy_bits": entropy_bits(families),
    }


def best_of_k_dsr(moments: dict[str, np.ndarray], k: int) -> float:
    """Mean over consecutive blocks of `k` of the DSR of the block's best net Sharpe, deflated for the block's
    scored experiments (0 for a block with none). `moments`: arrays of the Metrics fields in `_MOMENTS`."""
    values = best_of_k_blocks(moments, k)
    return float(values.mean()) if len(values) else math.nan


def best_of_k_blocks(moments: dict[str, np.ndarray], k: int) -> np.ndarray:
    """Per consecutive block of `k`: the DSR of the block's best net Sharpe (see `best_of_k_dsr`)."""
    blocks = len(moments["sharpe_net"]) // k
    values = []
    for block in range(blocks):
        part = {name: moments[name][block * k : (block + 1) * k] for name in _MOMENTS}
        scored = ~np.isnan(part["sharpe_net"])
        if not scored.any():
            values.append(0.0)
            continue
        sharpes = part["sharpe_net"][scored]
        best = int(np.flatnonzero(scored)[np.argmax(sharpes)])
        ppy = part["periods_per_year"][best]
        values.append(
            deflated_sharpe_ratio(
                part["sharpe_net"][best] / math.sqrt(ppy),
                int(part["n_bars"][best]),
                part["skewness"][best],
                part["kurtosis"][best],
                n_trials=int(scored.sum()),
                trials_sharpe_variance=float(np.var(sharpes)) / ppy,
            )
        )
    return np.array(values, dtype=float)


def entropy_bits(labels: Sequence[str]) -> float:
    """Shannon entropy of the labels' distribution, in bits (0 for one label or none)."""
    counts = np.array(list(Counter(labels).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() + 0.0)


def compare(samples: pl.DataFrame, resamples: int = 2000, seed: int = 0) -> pl.DataFrame:
    """Per window and statistic: base, final, difference and its 95% paired bootstrap interval.

    `samples` holds one `sample_record` row per completion of both policies, indices 0..N-1 each.
    """
    base = samples.filter(pl.col("policy") == "base").sort("index")
    final = samples.filter(pl.col("policy") == "final").sort("index")
    if base["index"].to_list() != final["index"].to_list() or base.is_empty():
        raise ComparisonError("the base and final samples must hold the same indices (the same seeds)")
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, base.height, base.height) for _ in range(resamples)]
    blocks = base.height // BEST_OF
    block_draws = [rng.integers(0, blocks, blocks) for _ in range(resamples)]
    rows = []
    for window in WINDOWS:
        base_arrays, final_arrays = _arrays(base, window), _arrays(final, window)
        observed_base, observed_final = _statistics(base_arrays), _statistics(final_arrays)
        differences: dict[str, list[float]] = {name: [] for name in STATISTICS}
        for rows_drawn in draws:
            resampled_base = _completion_statistics({k: v[rows_drawn] for k, v in base_arrays.items()})
            resampled_final = _completion_statistics({k: v[rows_drawn] for k, v in final_arrays.items()})
            for name, value in resampled_final.items():
                differences[name].append(value - resampled_base[name])
        block_differences = best_of_k_blocks(final_arrays, BEST_OF) - best_of_k_blocks(base_arrays, BEST_OF)
        differences[BEST_OF_STATISTIC] = [float(block_differences[drawn].mean()) for drawn in block_draws]
        for name in STATISTICS:
            drawn = np.array(differences[name], dtype=float)
            drawn = drawn[~np.isnan(drawn)]
            low, high = np.percentile(drawn, [2.5, 97.5]) if len(drawn) else (math.nan, math.nan)
            rows.append(
                {
                    "window": window,
                    "statistic": name,
                    "base": observed_base[name],
                    "final": observed_final[name],
                    "difference": observed_final[name] - observed_base[name],
                    "low": float(low),
                    "high": float(high),
                }
            )
    return pl.DataFrame(rows)


# ---- storage --------------------------------------------------------------------------------


def save_comparison(plan: ComparisonPlan, samples: pl.DataFrame, table: pl.DataFrame) -> Path:
    """Store the comparison (JSON, with what was compared) and its sample (Parquet), each atomically."""
    path = comparison_path(plan.runs_dir, plan.run)
    with atomic_path(path.with_suffix(".parquet")) as temporary:
        samples.write_parquet(temporary)
    document = {
        "run": plan.run,
        "checkpoint_cycle": plan.final.cycle,
        "n": plan.n,
        "seed": plan.seed,
        "comparison": table.to_dicts(),
    }
    write_bytes_atomic(path, json.dumps(document, indent=1).encode())
    return path
