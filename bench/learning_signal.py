"""What could the update learn from a night? The reward's gaps as PPO sees them, and what of them carries over.

Reads one night of `bench/learning.py` (or any run with an `evaluate-policy` sample): its replay
buffer (`RUNS/buffer/RUN`) and its comparison sample (`RUNS/evaluations/RUN.parquet`, base and
trained completions executed on the reward window and the holdout). Prints:

- the reward among the night's valid experiments: its mean and spread, and how much it moves per
  unit of net Sharpe (least squares), beside the failures' rungs: how many units of net Sharpe a
  failure's gap is worth;
- the reward–holdout agreement on the policy's own output (the distinct completions of the sample
  that ran on both windows, not the best and a sample of the rest as the run's agreement is
  measured): Spearman of the net Sharpe on the two windows, with its bootstrap interval;
- the same across model families: each family's mean net Sharpe on the two windows, and their rank
  agreement (what a policy that shifts its families would gain);
- turnover against the holdout's net Sharpe (costs are paid on both windows).

    .venv/bin/python bench/learning_signal.py --runs-dir RUNS --run RUN [--min-family 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.facts import load_comparison_sample
from sharpe_rl.selection import agreement


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--min-family", type=int, default=5, help="completions a family needs to be compared")
    args = parser.parse_args()

    night = ReplayBuffer(args.runs_dir).frame(run=args.run).rename({"metric_sharpe_net": "sharpe"})
    valid = night.filter(pl.col("error_class").is_null() & pl.col("sharpe").is_not_null())
    slope, _ = np.polyfit(valid["sharpe"].to_numpy(), valid["reward"].to_numpy(), 1)
    mean, spread = valid["reward"].mean(), valid["reward"].std()
    print(f"{args.run}: {night.height} experiments, {valid.height} valid")
    print(f"valid rewards: mean {mean:+.3f}, spread {spread:.3f}; {slope:.3f} reward per unit of net Sharpe")
    failures = night.filter(pl.col("error_class").is_not_null()).group_by("reward").agg(pl.len()).sort("reward")
    for rung, count in failures.iter_rows():
        gap = mean - rung
        print(f"  a failure at {rung:+.2f} ({count}): {gap:.2f} below the valid mean = {gap / slope:.1f} net Sharpe")

    sample = load_comparison_sample(args.runs_dir, args.run)
    if sample is None:
        raise SystemExit(f"no evaluate-policy sample of {args.run} in {args.runs_dir}: run sharpe-rl evaluate-policy")
    sample = sample.filter((pl.col("status") == "ok") & pl.col("holdout_sharpe_net").is_not_null())
    distinct = sample.unique("completion", keep="first", maintain_order=True)  # a completion both policies wrote
    print(f"\nthe evaluate-policy sample: {sample.height} completions ran on both windows, {distinct.height} distinct")
    policies = [(policy, sample.filter(pl.col("policy") == policy)) for policy in ("base", "final")]
    for label, rows in [("distinct", distinct), *policies]:
        found = agreement(rows["reward_sharpe_net"].to_numpy(), rows["holdout_sharpe_net"].to_numpy())
        if found is not None:
            interval = f"{found.rho:+.2f} [{found.lo:+.2f}, {found.hi:+.2f}]"
            print(f"  {label:<8} reward-holdout agreement {interval}, {found.n} completions")

    families = (
        distinct.group_by("family")
        .agg(pl.len().alias("n"), pl.col("reward_sharpe_net").mean(), pl.col("holdout_sharpe_net").mean())
        .filter(pl.col("n") >= args.min_family)
        .sort("reward_sharpe_net", descending=True)
    )
    print(f"\nby model family (at least {args.min_family} completions):")
    print("family              n   reward window  holdout")
    for family, n, reward, holdout in families.iter_rows():
        print(f"{family:<18}{n:3d}   {reward:+12.2f}  {holdout:+7.2f}")
    rho, p = spearmanr(families["reward_sharpe_net"], families["holdout_sharpe_net"])
    print(f"families' rank agreement: {rho:+.2f} over {families.height} families (p = {p:.3f})")
    rho, p = spearmanr(distinct["reward_turnover"], distinct["holdout_sharpe_net"])
    print(f"turnover (reward window) against the holdout's net Sharpe: Spearman {rho:+.2f} (p = {p:.4f})")


if __name__ == "__main__":
    main()
