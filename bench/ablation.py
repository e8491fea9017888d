"""Ablation of the reward: plain Sharpe, plus the diversity terms, plus the luck correction. Resumable.

Three runs of the pipeline (the `rl_run` flow, the Docker sandbox, the same seed, data and policy),
`--cycles` cycles of `--batch` experiments each, then `evaluate-policy` on each (its base policy
against its final checkpoint, `--n` completions each, on the reward window and the holdout):

- `plain`:     the clipped net Sharpe (RewardConfig's defaults);
- `diversity`: plus the novelty bonus (weight 0.2) and the copy penalty (0.5);
- `shrunk`:    plus the luck correction `shrunk` (the net Sharpe minus the expected best of the
               run's trials so far). Not `deflated`: on this data the deflated reward of a valid
               experiment is -0.93 ± 0.13 after 45 trials and -0.99 ± 0.03 after 768
               (bench/luck_correction.py), all but a failure's, which leaves PPO nothing to learn
               among the experiments that run.

and, asked for with `--configs`, `inspiration`: the diversity terms and the prompt
`v6_inspiration` (a few elites of the archive's other cells rendered into each prompt group's
prompt). `--learning-rate` sets PPO's (a run's name then carries it, so runs at different rates
live side by side in one runs directory).

Per configuration it prints (and writes to `--out`, JSON) the largest model-family share and
the family entropy (the whole run, and its last block of 6 cycles), the archive's coverage and QD
score at the end, the failure rate (whole run, last block), and the evaluate-policy comparison;
and draws `--plot`: per block of 6 cycles the share that runs, the largest family's share and the
archive coverage, and the evaluate-policy differences with their intervals.

Everything is resumable: a run of the same name resumes at its first cycle without a checkpoint,
a finished run is not run again, and a stored comparison of a run's final checkpoint is reused.
Run it again after an interruption with the same arguments.

    .venv/bin/python bench/ablation.py --policy runs/policy/tiny [--cycles 24] [--batch 16] [--seed 0]
        [--learning-rate 3e-4] [--configs plain diversity shrunk inspiration]
        [--runs-dir runs] [--out runs/ablation.json] [--plot docs/ablation.png]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import polars as pl

from sharpe_rl.config import PolicyConfig, PPOConfig, RewardConfig, RunConfig, SandboxConfig
from sharpe_rl.services import use_orchestration_environment

CONFIGS: dict[str, RewardConfig] = {
    "plain": RewardConfig(),
    "diversity": RewardConfig(novelty_weight=0.2, copy_penalty=0.5),
    "shrunk": RewardConfig(novelty_weight=0.2, copy_penalty=0.5, luck_correction="shrunk"),
    "inspiration": RewardConfig(novelty_weight=0.2, copy_penalty=0.5),  # and the prompt v6_inspiration
}
#: The prompt of each configuration that does not use the default one.
PROMPTS = {"inspiration": "v6_inspiration"}
BLOCK = 6  # cycles per block of the per-block figures


def run_config(name: str, args: argparse.Namespace) -> RunConfig:
    default_lr = PPOConfig().learning_rate
    lr_suffix = "" if args.learning_rate == default_lr else f"-lr{args.learning_rate:g}"
    return RunConfig(
        name=f"ablation-{name}-s{args.seed}{lr_suffix}",
        cycles=args.cycles,
        batch_size=args.batch,
        dataset=args.data,
        seed=args.seed,
        runs_dir=args.runs_dir,
        sandbox=SandboxConfig(workers=args.workers),
        reward=CONFIGS[name],
        policy=PolicyConfig(model=str(args.policy)),
        ppo=PPOConfig(learning_rate=args.learning_rate),
        **({"prompt_version": PROMPTS[name]} if name in PROMPTS else {}),
    )


def run_and_evaluate(config: RunConfig, n: int) -> dict[str, Any]:
    """The run to its last cycle (resumed if interrupted), then its evaluate-policy comparison (reused if stored)."""
    from flows.evaluate_policy import evaluate_policy
    from flows.rl_run import run
    from sharpe_rl.facts import load_comparison
    from sharpe_rl.policy.checkpoint import Checkpoints

    assert config.name is not None
    if Checkpoints(config.runs_dir, config.name).latest_cycle() != config.cycles - 1:
        run(config)
    stored = load_comparison(config.runs_dir, config.name)
    if stored is None or stored["checkpoint_cycle"] != config.cycles - 1 or stored["n"] != n:
        evaluate_policy(config.name, n=n, runs_dir=config.runs_dir)
        stored = load_comparison(config.runs_dir, config.name)
    assert stored is not None
    return stored


def run_figures(config: RunConfig) -> dict[str, Any]:
    """The run's diversity, failures and archive, from its replay buffer (as the post-mortem reads them)."""
    from sharpe_rl.analysis.quality_diversity import archive_by_cycle
    from sharpe_rl.analysis.tables import annotate
    from sharpe_rl.buffer import ReplayBuffer

    annotated = annotate(ReplayBuffer(config.runs_dir).frame(run=config.name))
    annotated = annotated.with_columns(block=pl.col("cycle") // BLOCK)
    last_block = annotated.filter(pl.col("block") == pl.col("block").max())
    per_block = [
        {
            "block": block,
            "run_pct": 100 * (part["status"] == "ok").mean(),
            "top_family_pct": _top_family(part)["pct"],
            "reward_mean": part["reward"].mean(),
        }
        for block, part in ((b, annotated.filter(pl.col("block") == b)) for b in sorted(annotated["block"].unique()))
    ]
    archive = archive_by_cycle(annotated)
    return {
        "experiments": annotated.height,
        "top_family": _top_family(annotated),
        "top_family_last_block": _top_family(last_block),
        "family_entropy_bits": _entropy(annotated),
        "family_entropy_bits_last_block": _entropy(last_block),
        "failure_pct": 100 * (annotated["status"] != "ok").mean(),
        "failure_pct_last_block": 100 * (last_block["status"] != "ok").mean(),
        "coverage_pct": archive["coverage_pct"][-1],
        "qd_score": archive["qd_score"][-1],
        "per_block": per_block,
        "coverage_by_cycle": archive.select("cycle", "coverage_pct").to_dicts(),
    }


def _top_family(annotated: pl.DataFrame) -> dict[str, Any]:
    families = annotated["model_family"].drop_nulls()
    counts = families.value_counts(sort=True)
    return {"family": counts[0, "model_family"], "pct": 100 * counts[0, "count"] / families.len()}


def _entropy(annotated: pl.DataFrame) -> float:
    from sharpe_rl.evaluate_policy import entropy_bits

    return entropy_bits(annotated["model_family"].drop_nulls().to_list())


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The ablation table: one row per configuration."""
    header = (
        "| reward | largest family (run / last 6 cycles) | family entropy, bits (run / last 6) | archive coverage "
        "| QD score | failures (run / last 6) | Δ run share, reward window | Δ mean net Sharpe, reward window "
        "| Δ mean net Sharpe, holdout | Δ best-of-16 DSR, holdout | Δ family entropy, reward window |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    rows = []
    for name, result in results.items():
        figures, compared = result["figures"], _by_key(result["comparison"]["comparison"])
        top, top_last = figures["top_family"], figures["top_family_last_block"]
        rows.append(
            f"| {name} | {top['family']} {top['pct']:.0f}% / {top_last['family']} {top_last['pct']:.0f}% "
            f"| {figures['family_entropy_bits']:.2f} / {figures['family_entropy_bits_last_block']:.2f} "
            f"| {figures['coverage_pct']:.1f}% | {figures['qd_score']:.1f} "
            f"| {figures['failure_pct']:.1f}% / {figures['failure_pct_last_block']:.1f}% "
            f"| {_difference(compared['reward', 'run_share'], 100, '%')} "
            f"| {_difference(compared['reward', 'mean_sharpe'])} "
            f"| {_difference(compared['holdout', 'mean_sharpe'])} "
            f"| {_difference(compared['holdout', 'best_of_16_dsr'])} "
            f"| {_difference(compared['reward', 'family_entropy_bits'])} |"
        )
    return header + "\n".join(rows)


def _by_key(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(row["window"], row["statistic"]): row for row in rows}


def _difference(row: dict, scale: float = 1.0, unit: str = "") -> str:
    return (
        f"{scale * row['difference']:+.2f}{unit} [{scale * row['low']:+.2f}, {scale * row['high']:+.2f}] "
        f"({scale * row['base']:.2f} → {scale * row['final']:.2f})"
    )


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for name, result in results.items():
        blocks = result["figures"]["per_block"]
        x = [f"{BLOCK * b['block']}-{BLOCK * b['block'] + BLOCK - 1}" for b in blocks]
        axes[0, 0].plot(x, [b["run_pct"] for b in blocks], marker="o", label=name)
        axes[0, 1].plot(x, [b["top_family_pct"] for b in blocks], marker="o", label=name)
        coverage = result["figures"]["coverage_by_cycle"]
        axes[1, 0].plot([c["cycle"] for c in coverage], [c["coverage_pct"] for c in coverage], label=name)
    axes[0, 0].set(title="experiments that run, per block of cycles (%)", xlabel="cycles")
    axes[0, 1].set(title="largest model family's share, per block (%)", xlabel="cycles")
    axes[1, 0].set(title="archive coverage (% of the grid's cells)", xlabel="cycle")
    names = list(results)
    for offset, (window, colour) in enumerate((("reward", "tab:blue"), ("holdout", "tab:orange"))):
        rows = [_by_key(results[n]["comparison"]["comparison"])[window, "mean_sharpe"] for n in names]
        positions = [i + 0.15 * (2 * offset - 1) for i in range(len(names))]
        centres = [r["difference"] for r in rows]
        errors = [[r["difference"] - r["low"] for r in rows], [r["high"] - r["difference"] for r in rows]]
        axes[1, 1].errorbar(positions, centres, yerr=errors, fmt="o", capsize=4, color=colour, label=f"{window} window")
    axes[1, 1].axhline(0, color="grey", linewidth=0.8)
    axes[1, 1].set_xticks(range(len(names)), names)
    axes[1, 1].set(title="evaluate-policy: Δ mean net Sharpe (final − base), 95% interval")
    for axis in axes.flat:
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=Path("runs/policy/tiny"))
    parser.add_argument("--data", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--cycles", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--n", type=int, default=64, help="completions per policy in evaluate-policy")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["plain", "diversity", "shrunk"])
    parser.add_argument("--learning-rate", type=float, default=PPOConfig().learning_rate, help="PPO's (adapters)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablation.json"))
    parser.add_argument("--plot", type=Path, default=Path("docs/ablation.png"))
    args = parser.parse_args()
    args.policy, args.data, args.runs_dir = args.policy.resolve(), args.data.resolve(), args.runs_dir.resolve()

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the figures, not a line per task
    use_orchestration_environment(args.runs_dir, own_server=True)

    results: dict[str, dict[str, Any]] = {}
    for name in args.configs:
        config = run_config(name, args)
        print(f"{name}: run {config.name}, load average {os.getloadavg()}", flush=True)
        comparison = run_and_evaluate(config, args.n)
        results[name] = {"run": config.name, "reward": config.reward.model_dump(), "comparison": comparison}
        results[name]["figures"] = run_figures(config)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(markdown_table(results))
    plot(results, args.plot)
    print(f"\nfigures in {args.out}, plot in {args.plot}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
