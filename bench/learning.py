"""Is the learning real, over seeds? Base and trained policies after a night each, compared as pre-registered.

The comparison is written down in docs/learning.md ("The pre-registered comparison") before its
runs: for each seed, a night of `--cycles` × `--batch-size` on the panel, then `sharpe-rl
evaluate-policy` (N completions of the base policy and N of the night's final checkpoint, same
prompt and seeds, executed on the reward window and the holdout). The N pairs of every seed are
pooled, and each difference (trained − base) gets a 95% paired bootstrap interval. A resample draws
one set of pair indices for all seeds: the base half is the same N completions in every seed
(evaluate-policy samples it alike in every runs folder), so its sampling error must count
once, not once a seed; the rows (base i, trained i of each seed) are independent across i:

- holdout: mean net Sharpe of the completions that ran (the primary outcome), and their evidence
  (net Sharpe over the panel's no-skill noise);
- reward window: the same two;
- run share (the completions that ran and were scored), and mean turnover of those that ran;
- for each, the smallest true difference the pooled sample sees 4 times in 5 (`sharpe_rl.power`), and for a
  primary outcome it cannot tell from noise, the pairs it would take to see the difference observed;
- what the policy writes, base beside trained (the post-mortem's tables): outcomes, model families,
  feature blocks, turnover, the features' windows and the model's settings.

    .venv/bin/python bench/learning.py --data PANEL [--last-days D] [--seeds 1 2 3] [--cycles 24]
        [--batch-size 16] [--n 64] [--ppo KEY=VALUE ...] [--runs-dir DIR] [--out learning.json]

`--ppo` changes a setting of `PPOConfig` for the nights (repeatable; values parsed as JSON when they
parse), e.g. `--ppo learning_rate=5e-4 --ppo epochs=4`.

Resumable: a seed whose night finished is not run again, a seed whose comparison is stored is not
compared again (nor its night looked for: a seed's `evaluations/learning-seedN.parquet` and its facts,
`holdout/learning-seedN.facts.json`, are all the pooling reads, so seeds run apart, each in its own
`--runs-dir`, pool when those files are copied into one).

A night takes an hour or more: run it from a detached worktree of the commit under test (`git
worktree add --detach ../night HEAD`, then `PYTHONPATH=../night` with the venv's Python), so that
changes to the checkout meanwhile (a merge, an edit of the harness) do not change the code it runs.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
from learning_stability import ppo_settings

from sharpe_rl.analysis.tables import policy_changes
from sharpe_rl.config import PolicyConfig, PPOConfig, RunConfig
from sharpe_rl.facts import load_facts
from sharpe_rl.policy.checkpoint import Checkpoints
from sharpe_rl.power import detectable_difference, pairs_needed
from sharpe_rl.services import use_orchestration_environment

RESAMPLES = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--last-days", type=int, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--cycles", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=64, help="completions per policy per seed")
    parser.add_argument("--policy", type=Path, default=Path("runs/policy/tiny"))
    parser.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE", help="a PPOConfig setting")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/learning"))
    parser.add_argument("--out", type=Path, default=None, help="write the pooled comparison here (JSON)")
    args = parser.parse_args()

    data = args.data.resolve()
    if args.last_days:
        data = last_days(data, args.last_days, args.runs_dir)
    use_orchestration_environment(args.runs_dir, own_server=True)
    ppo = ppo_settings(args.ppo, PPOConfig().group_size)
    samples = []
    for seed in args.seeds:
        name = f"learning-seed{seed}"
        stored = args.runs_dir / "evaluations" / f"{name}.parquet"
        if not stored.is_file():
            if Checkpoints(args.runs_dir, name).latest_cycle() != args.cycles - 1:
                night(name, seed, data, ppo, args)
            cli("evaluate-policy", name, "--n", args.n, "--runs-dir", args.runs_dir)
        facts = load_facts(args.runs_dir, name)
        sigma = facts.noskill.sigma if facts else float("nan")
        samples.append(pl.read_parquet(stored).with_columns(seed=pl.lit(seed), sigma=pl.lit(sigma)))
        if facts and facts.selection and facts.selection.agreement:
            print(f"seed {seed}: reward–holdout agreement {facts.selection.agreement.sentence()}")
    pooled = pl.concat(samples, how="diagonal_relaxed")
    table = compare(pooled)
    n = pooled.filter(pl.col("policy") == "base").height // len(args.seeds)  # the stored samples' size, not --n's
    print_table(table, len(args.seeds), n)
    print_changes(pooled)
    if args.out:
        args.out.write_text(json.dumps({"seeds": args.seeds, "n": n, "comparison": table}, indent=1))


def night(name: str, seed: int, data: Path, ppo: PPOConfig, args: argparse.Namespace) -> None:
    """The seed's night (resumed where it stopped), as `sharpe-rl run` runs it, with `ppo` for its updates."""
    from flows.rl_run import run

    print(f"night {name}: {args.cycles} x {args.batch_size}, seed {seed}, PPO {ppo.model_dump()}", flush=True)
    run(
        RunConfig(
            name=name,
            cycles=args.cycles,
            batch_size=args.batch_size,
            dataset=data,
            seed=seed,
            runs_dir=args.runs_dir,
            policy=PolicyConfig(model=str(args.policy.resolve())),
            ppo=ppo,
        )
    )


def cli(*arguments: object) -> None:
    command = [sys.executable, "-m", "cli", *map(str, arguments)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def last_days(data: Path, days: int, runs: Path) -> Path:
    from sharpe_rl.data.panel import load_panel

    panel = load_panel(data)
    path = runs / f"{data.stem}-last-{days}d.parquet"
    if not path.is_file():
        runs.mkdir(parents=True, exist_ok=True)
        panel.filter(pl.col("timestamp") > pl.col("timestamp").max() - pl.duration(days=days)).write_parquet(path)
    return path


def statistics(rows: pl.DataFrame) -> dict[str, float]:
    """One policy's statistics over a (pooled) sample."""
    out = {}
    for window in ("holdout", "reward"):
        sharpe = rows[f"{window}_sharpe_net"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        ran = ~np.isnan(sharpe)
        sigma = rows["sigma"].to_numpy()
        out[f"{window} mean net Sharpe"] = float(sharpe[ran].mean()) if ran.any() else np.nan
        out[f"{window} mean evidence (sigmas)"] = float((sharpe[ran] / sigma[ran]).mean()) if ran.any() else np.nan
    ran = ~np.isnan(rows["reward_sharpe_net"].cast(pl.Float64).fill_null(np.nan).to_numpy())
    out["run share"] = float(ran.mean())
    turnover = (
        rows["reward_turnover"].cast(pl.Float64).fill_null(np.nan).to_numpy()
        if "reward_turnover" in rows.columns
        else np.full(len(ran), np.nan)
    )
    out["mean turnover (reward window)"] = float(np.nanmean(turnover[ran])) if ran.any() else np.nan
    return out


def compare(pooled: pl.DataFrame) -> list[dict[str, float | str]]:
    """Trained − base per statistic, with a 95% paired bootstrap interval (one draw of pair indices for all seeds:
    their base halves are the same completions)."""
    base = pooled.filter(pl.col("policy") == "base").sort("seed", "index")
    final = pooled.filter(pl.col("policy") == "final").sort("seed", "index")
    assert base.select("seed", "index").equals(final.select("seed", "index")), "unpaired samples"
    observed_base, observed_final = statistics(base), statistics(final)
    rng = np.random.default_rng(0)
    seeds = base["seed"].to_numpy()
    groups = [np.flatnonzero(seeds == s) for s in np.unique(seeds)]
    pairs = len(groups[0])
    assert all(len(g) == pairs for g in groups), "every seed needs the same number of pairs"
    drawn: dict[str, list[float]] = {name: [] for name in observed_base}
    for _ in range(RESAMPLES):
        draw = rng.integers(0, pairs, pairs)
        rows = np.concatenate([g[draw] for g in groups])
        b, f = statistics(base[rows]), statistics(final[rows])
        for name in drawn:
            drawn[name].append(f[name] - b[name])
    table = []
    for name in observed_base:
        values = np.array(drawn[name])
        low, high = np.nanpercentile(values, [2.5, 97.5])
        table.append(
            {
                "statistic": name,
                "base": observed_base[name],
                "trained": observed_final[name],
                "difference": observed_final[name] - observed_base[name],
                "low": float(low),
                "high": float(high),
                "detectable": detectable_difference(low, high),  # seen 4 times in 5 (interval excluding 0)
            }
        )
    return table


def print_table(table: list[dict], seeds: int, n: int) -> None:
    print(f"\npooled over {seeds} seeds, {n} pairs each (95% paired bootstrap, one index draw for all seeds)")
    print(f"{'statistic':<34}{'base':>9}{'trained':>9}{'trained - base':>16}  interval          seen 4 in 5")
    for row in table:
        print(
            f"{row['statistic']:<34}{row['base']:9.3f}{row['trained']:9.3f}{row['difference']:+16.3f}"
            f"  [{row['low']:+.3f}, {row['high']:+.3f}]  {row['detectable']:11.3f}"
        )
    primary = table[0]
    if primary["low"] <= 0 <= primary["high"] and primary["difference"]:
        needed = pairs_needed(seeds * n, primary["low"], primary["high"], primary["difference"])
        print(
            f"the primary's {primary['difference']:+.3f}, if true, would be seen 4 times in 5 with about {needed:,}"
            f" pairs ({math.ceil(needed / seeds):,} a seed)"
        )


def print_changes(pooled: pl.DataFrame) -> None:
    """What the policy writes, base beside trained, over every seed's sample (the post-mortem's tables)."""
    shares, numbers = policy_changes(pooled)
    for title, table in (("shares (%)", shares), ("numbers, of what ran", numbers)):
        print(f"\nwhat the policy writes, {title}: {'base':>9}{'trained':>9}{'change':>9}")
        for row in table.iter_rows(named=True):
            cells = "".join(
                f"{row[k]:9.3f}" if row[k] is not None else f"{'-':>9}" for k in ("base", "trained", "change")
            )
            print(f"  {row['aspect'] + ': ' + row['value']:<44}{cells}")


if __name__ == "__main__":
    main()
