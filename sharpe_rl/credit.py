"""What the update learns from: each experiment's own reward, or the evidence of every experiment that made its choice.

One experiment's net Sharpe on the reward window says little about its holdout (Spearman about +0.06 on the
policy's own output, docs/learning.md), while the policy's choices carry over: model families rank alike on
both windows. A policy gradient on each experiment's own reward sees a family's gap through one experiment's
luck. `family_credit` gives the update, for every experiment that ran, the mean reward of its model family in
the run so far (this cycle's included), shrunk toward the mean of every experiment that ran by `prior`
pseudo-experiments, so that a family seen twice is not paid its luck. A failure keeps its own reward (its rung
of the penalty ladder). The reward itself is unchanged: it is what is logged, reported and scored; only the
update's input changes (`PPOConfig.credit`).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from sharpe_rl.experience import Experience


def family_credit(run_so_far: pl.DataFrame, experiences: Sequence[Experience], prior: float) -> list[float]:
    """The update's reward for each of this cycle's `experiences`, given the run's experiences through this cycle
    (`History.through`: columns `model_family`, `error_class`, `reward`)."""
    ran = run_so_far.filter(pl.col("error_class").is_null() & pl.col("model_family").is_not_null())
    if ran.is_empty():
        return [e.reward for e in experiences]
    overall = float(ran["reward"].mean())
    families = ran.group_by("model_family").agg(pl.col("reward").sum().alias("total"), pl.len().alias("n"))
    seen = {family: (total, n) for family, total, n in families.iter_rows()}
    credits = []
    for e in experiences:
        if e.error_class is not None or e.model_family not in seen:
            credits.append(e.reward)
            continue
        total, n = seen[e.model_family]
        credits.append((total + prior * overall) / (n + prior))
    return credits
