"""What each `RewardConfig.luck_correction` does to the rewards of a real run's experiments.

Re-shapes the rewards of the experiments that ran in a stored run (default: the committed
example run, tiny policy on the daily sample) under `evidence` (the default: in units of the run's
no-skill noise, from its facts), `none`, `deflated` and `shrunk`, with the run's own trial count
and Sharpe variance and with the trial counts of longer runs, and prints each one's mean, spread
and range, the share of rewards within 0.05 of ±1 (saturated: PPO cannot tell those apart), and
the spread among the worst quarter of the experiments by net Sharpe (is the bottom still
graded?). A correction whose spread collapses leaves PPO little to learn from among the valid
experiments; one whose mean falls narrows the gap to the failures' penalties.

    .venv/bin/python bench/luck_correction.py [--runs-dir docs/example-run/runs] [--run example]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from sharpe_rl.buffer import ReplayBuffer
from sharpe_rl.config import RewardConfig
from sharpe_rl.facts import load_facts
from sharpe_rl.scoring import Metrics, shape_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("docs/example-run/runs"))
    parser.add_argument("--run", default="example")
    args = parser.parse_args()
    buffer = ReplayBuffer(args.runs_dir)
    scored = [
        Metrics(valid=True, **{k: v for k, v in e.metrics.items() if k in Metrics.model_fields})
        for cycle in buffer.cycles_done(args.run)
        for e in buffer.experiences(args.run, cycle)
        if e.error_class is None
    ]
    variance = statistics.pvariance([m.sharpe_net for m in scored])
    print(f"{len(scored)} scored experiments of run {args.run}; variance of their net Sharpe {variance:.3f}")
    print(f"penalties: runtime {RewardConfig().penalty_runtime}, format {RewardConfig().penalty_format}")
    facts = load_facts(args.runs_dir, args.run)
    sigma = facts.noskill.sigma if facts else None
    corrections = ("evidence", "none", "deflated", "shrunk") if sigma else ("none", "deflated", "shrunk")
    if sigma:
        print(f"the run's no-skill noise: {sigma:.3f} ({facts.noskill.sentence()})")
    worst = sorted(range(len(scored)), key=lambda i: scored[i].sharpe_net)[: max(1, len(scored) // 4)]
    columns = ("mean", "std", "min", "max")
    print(f"{'correction':<10} {'trials':>6} " + " ".join(f"{c:>7}" for c in columns) + "  saturated  worst std")
    for correction in corrections:
        cfg = RewardConfig(luck_correction=correction)
        for trials in (len(scored), 200, 768):
            rewards = [
                shape_reward(m, cfg, n_trials=trials, trials_sharpe_variance=variance, noskill_sigma=sigma)
                for m in scored
            ]
            saturated = sum(abs(r) >= 0.95 for r in rewards) / len(rewards)
            print(
                f"{correction:<10} {trials:>6} {statistics.mean(rewards):>7.3f} {statistics.pstdev(rewards):>6.3f} "
                f"{min(rewards):>7.3f} {max(rewards):>7.3f} {saturated:>9.1%} "
                f"{statistics.pstdev([rewards[i] for i in worst]):>9.3f}"
            )


if __name__ == "__main__":
    main()
