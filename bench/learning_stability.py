"""Does PPO keep the policy's format while the money signal is noise? Cycles of generate → reward → update.

The question behind issue 12's point 5: on the defaults, the share of experiments that run falls
cycle after cycle (95% → 78% by cycle 25 in a 48 × 16 run) while the KL to the base creeps up.
A full run answers it slowly (each experiment is a sandbox execution), so this loop keeps the
pipeline's own policy, generator and PPO update and replaces only the execution:

- ``--reward noise`` (the default): the static checks (`check_completion`, no container) decide
  whether an experiment would run; one that fails them earns its rung of the penalty ladder
  (`shape_reward`), one that passes earns a draw from N(--mean, --noise) clipped to [-1, 1],
  seeded by (cycle, index) so that every configuration sees the same draws. The defaults are the
  mean and spread of the valid rewards of the example run (docs/example-run): -0.09 and 0.22. A
  Sharpe ratio on three daily series is close to that: mostly noise, with the code's contribution
  small. `--noise 0` is the control: the only signal left is "it runs" versus "it fails".
- ``--reward sandbox``: the real thing, `evaluate()` in the Docker sandbox and the default reward.
- ``--reward family``: a signal that is there to learn: an experiment that passes the checks earns 1
  when its model family (as the post-mortem reads it) is `--target`, 0 otherwise (the ladder for
  the rest). How fast the target's share grows says how much an update moves the policy.
- ``--reward families --night RUN [--runs-dir RUNS]``: what a real night paid, by model family. An
  experiment that passes the checks earns a draw from N(its family's mean reward, the spread within
  families), both measured on the valid experiments of that night's replay buffer; a family the
  night never wrote earns the night's mean. The gaps between families are as small as the real
  reward makes them, beside failures as costly, so this asks whether an update moves the policy
  toward the families a real reward pays. `--within` scales the spread within families: at 0 each
  family earns exactly its mean, what a reward that paid the choice without one experiment's luck
  would pay. With `--final`, it also prints the family mix's expected reward and net Sharpe (the
  night's family means) for the base and the final policy (with any `--reward` when `--night` is given).

With `--credit family` the update learns from each passing experiment's family mean so far in the run
(`sharpe_rl.credit.family_credit`, as `PPOConfig.credit` does in the pipeline, shrunk by `--prior`) instead
of its own reward; the reward printed is still its own.

It prints, per block of `--block` cycles, the share that passes the checks, the mean reward, the
sampling policy's entropy per token, the KL to the base per completion and the KL coefficient,
and writes every cycle's numbers to `--out` (JSON). Settings of `PPOConfig` are changed with
`--set key=value` (repeatable), e.g. `--set advantage=group --set whiten_advantages=false`.

    .venv/bin/python bench/learning_stability.py --policy runs/policy/tiny --cycles 24 \
        [--batch 16] [--group-size 4] [--noise 0.22] [--set KEY=VALUE ...] [--out runs/bench/stability/NAME.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sharpe_rl.buffer import ReplayBuffer, experiences_frame
from sharpe_rl.checks import check_completion
from sharpe_rl.classify import classify
from sharpe_rl.config import EvalConfig, PolicyConfig, PPOConfig, RewardConfig, RunConfig, SandboxConfig
from sharpe_rl.credit import family_credit
from sharpe_rl.data.panel import detect_interval, load_panel
from sharpe_rl.evaluation import EvaluationRef, evaluate, load_evaluation
from sharpe_rl.experience import Experience
from sharpe_rl.policy.generation import make_generator
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.prompts import run_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS, ErrorClass
from sharpe_rl.scoring import shape_reward
from sharpe_rl.spec import SpecError


def ppo_settings(pairs: list[str], group_size: int) -> PPOConfig:
    """PPOConfig with `key=value` changes (values parsed as JSON when they parse, else as strings)."""
    changes: dict[str, object] = {"group_size": group_size}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            changes[key] = json.loads(text)
        except json.JSONDecodeError:
            changes[key] = text
    return PPOConfig.model_validate(PPOConfig().model_dump() | changes)


def family_entropy_bits(families: list[str]) -> float:
    counts = np.array([families.count(f) for f in set(families)], dtype=float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def checked(completion: str) -> tuple[str | None, SpecError | None]:
    """(model family, None) for a completion that passes the static checks (no container), else (None, its error)."""
    try:
        spec = check_completion(completion, OHLCV_COLUMNS)
    except SpecError as exc:
        return None, exc
    return classify(spec).model_family, None


def family_rewards(completions: list[str], target: str, cfg: RewardConfig):
    """(reward, status, family) per completion: the ladder for static failures, 1 for the target family, else 0."""
    out = []
    for completion in completions:
        family, error = checked(completion)
        if error is not None:
            out.append((shape_reward(error.error_class, cfg), error.error_class.value, None))
        else:
            out.append((float(family == target), "ok", family))
    return out


def check_sample(completions: list[str], per_class: int = 3) -> tuple[float, dict[str, int], dict[str, list[str]]]:
    """One pass of the static checks over a sample: the share that passes, the failures by error class, and a few
    failing completions of each class with the checks' message (what the update broke)."""
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for completion in completions:
        _, error = checked(completion)
        if error is None:
            continue
        name = error.error_class.value
        counts[name] = counts.get(name, 0) + 1
        if len(examples.setdefault(name, [])) < per_class:
            examples[name].append(f"{error}\n{completion}")
    return 1 - sum(counts.values()) / len(completions), dict(sorted(counts.items())), examples


def drawn_rewards(completions: list[str], cycle: int, mean_of: Callable[[str], float], spread: float, cfg):
    """(reward, status, family) per completion: the ladder for static failures; for the rest a draw from
    N(mean_of(family), spread) clipped to [-1, 1], seeded by (cycle, index) so every configuration sees the same."""
    out = []
    for index, completion in enumerate(completions):
        family, error = checked(completion)
        if error is not None:
            out.append((shape_reward(error.error_class, cfg), error.error_class.value, None))
            continue
        draw = np.random.default_rng([cycle, index]).normal(mean_of(family), spread)
        out.append((float(np.clip(draw, -1.0, 1.0)), "ok", family))
    return out


@dataclass(frozen=True)
class NightFamilies:
    """What a real night paid each model family: the mean reward and net Sharpe of its valid experiments, the
    night's mean reward, and the spread of rewards within a family (pooled)."""

    reward: dict[str, float]
    sharpe: dict[str, float]
    mean: float
    spread: float

    @classmethod
    def of(cls, runs_dir: Path, run: str, within: float = 1.0) -> NightFamilies:
        """Read run `run` of `runs_dir`'s replay buffer; `within` scales the spread within a family."""
        valid = (
            ReplayBuffer(runs_dir)
            .frame(run=run)
            .rename({"metric_sharpe_net": "sharpe"})
            .filter(pl.col("error_class").is_null() & pl.col("model_family").is_not_null())
        )
        if valid.is_empty():
            raise SystemExit(f"run {run} has no valid experiments in {runs_dir}/buffer")
        by_family = valid.group_by("model_family").agg(pl.col("reward").mean(), pl.col("sharpe").mean())
        deviations = valid.with_columns(pl.col("reward") - pl.col("reward").mean().over("model_family"))["reward"]
        return cls(
            reward=dict(zip(by_family["model_family"], by_family["reward"], strict=True)),
            sharpe=dict(zip(by_family["model_family"], by_family["sharpe"], strict=True)),
            mean=float(valid["reward"].mean()),
            spread=within * float(np.sqrt((deviations**2).mean())),
        )

    def mean_of(self, family: str) -> float:
        """The night's mean reward of a family (of the whole night for one it never wrote)."""
        return self.reward.get(family, self.mean)

    def mix(self, families: list[str]) -> tuple[float, float]:
        """The expected reward and net Sharpe of a mix of model families (those the night wrote)."""
        known = [f for f in families if f in self.reward]
        return statistics.fmean(self.reward[f] for f in known), statistics.fmean(self.sharpe[f] for f in known)


def sandbox_rewards(completions: list[str], ref: EvaluationRef, cfg: RewardConfig, workers: int):
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda c: evaluate(c, ref), completions))
    sigma = load_evaluation(ref).noskill.sigma
    return [
        (o.reward(cfg, noskill_sigma=sigma), o.status, classify(o.spec).model_family if o.spec is not None else None)
        for o in outcomes
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="runs/policy/tiny")
    parser.add_argument("--data", type=Path, default=Path("data/sample_daily.parquet"))
    parser.add_argument("--cycles", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4, help="PPOConfig.group_size (used by advantage=group)")
    parser.add_argument("--block", type=int, default=6, help="cycles per line of the summary")
    parser.add_argument("--reward", choices=("noise", "sandbox", "family", "families"), default="noise")
    parser.add_argument("--night", help="a real night's run name (--reward families)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="the runs folder of --night")
    parser.add_argument(
        "--within",
        type=float,
        default=1.0,
        help="scales the spread of rewards within a family (--reward families); 0 pays each family its mean",
    )
    parser.add_argument("--target", default="xgboost", help="the rewarded model family (--reward family)")
    parser.add_argument("--mean", type=float, default=-0.09, help="mean reward of a valid experiment (noise)")
    parser.add_argument("--noise", type=float, default=0.22, help="spread of a valid experiment's reward (noise)")
    parser.add_argument(
        "--credit",
        choices=("own", "family"),
        default="own",
        help="what the update learns from: each experiment's own reward, or its family's so far (family_credit)",
    )
    parser.add_argument("--prior", type=float, default=4.0, help="pseudo-experiments of the shrinkage (--credit)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a PPOConfig setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--constrained", action="store_true", help="decode with the JSON constraint (PolicyConfig.constrained_json)"
    )
    parser.add_argument("--workers", type=int, default=2, help="sandbox executions in parallel (sandbox)")
    parser.add_argument("--out", type=Path, default=None, help="write every cycle's numbers here (JSON)")
    parser.add_argument(
        "--final",
        type=int,
        default=0,
        help="completions of the base and of the final policy (one seed) to compare: the share that passes the "
        "static checks, and the share identical to the base's",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.reward == "families" and args.night is None:
        parser.error("--reward families needs --night (a real night's run in --runs-dir)")
    night = NightFamilies.of(args.runs_dir, args.night, args.within) if args.night else None

    ppo = ppo_settings(args.set, args.group_size)
    reward_cfg = RewardConfig()
    policy_cfg = PolicyConfig(model=args.policy, constrained_json=args.constrained)
    panel = load_panel(args.data)
    symbols = panel.get_column("symbol").unique().sort().to_list()
    prompt = run_prompt(RunConfig(), detect_interval(panel), symbols)
    policy = load_policy(policy_cfg, seed=args.seed)
    trainer = PPOTrainer(policy, ppo, seed=args.seed)
    from transformers import AutoTokenizer  # here, so that sharpe_rl (its OpenMP setting) loads before torch

    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    generator = make_generator(policy_cfg, model=policy.model, tokenizer=tokenizer)
    ref = None
    if args.reward == "sandbox":
        cache = Path("runs/cache")
        ref = EvaluationRef.of(args.data, EvalConfig(), SandboxConfig(workers=args.workers), cache, seed=args.seed)

    changed = {k: v for k, v in ppo.model_dump().items() if v != PPOConfig().model_dump()[k]}
    print(
        f"PPO settings changed from the defaults: {changed or 'none'}; reward {args.reward}; credit {args.credit}",
        flush=True,
    )
    final_seed = 999_999_937
    base = [g.completion for g in generator.generate([prompt] * args.final, seed=final_seed)] if args.final else []
    rows, run_so_far = [], []
    for cycle in range(args.cycles):
        started = time.perf_counter()
        generations = generator.generate([prompt] * args.batch, seed=args.seed * 1_000_003 + cycle)
        completions = [g.completion for g in generations]
        if args.reward == "noise":
            scored = drawn_rewards(completions, cycle, lambda _: args.mean, args.noise, reward_cfg)
        elif args.reward == "family":
            scored = family_rewards(completions, args.target, reward_cfg)
        elif args.reward == "families":
            scored = drawn_rewards(completions, cycle, night.mean_of, night.spread, reward_cfg)
        else:
            scored = sandbox_rewards(completions, ref, reward_cfg, args.workers)
        experiences = [
            Experience.from_generation(
                g, run="bench", cycle=cycle, index=i, prompt_version="v5_rules", reward=reward, cache_key=None
            ).model_copy(update={"model_family": family, "error_class": None if status == "ok" else ErrorClass(status)})
            for i, (g, (reward, status, family)) in enumerate(zip(generations, scored, strict=True))
        ]
        learned = None
        if args.credit == "family":
            run_so_far += experiences
            learned = family_credit(experiences_frame(run_so_far), experiences, args.prior)
        stats = trainer.update(experiences, learned)
        statuses = [status for _, status, _ in scored]
        rows.append(
            {
                "cycle": cycle,
                "ok_share": statuses.count("ok") / len(statuses),
                "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
                "reward_mean": statistics.fmean(r for r, _, _ in scored),
                "family_entropy_bits": family_entropy_bits([f for _, _, f in scored if f is not None]),
                "target_share": sum(f == args.target for _, _, f in scored) / len(scored),
                "completion_tokens": statistics.fmean(len(g.completion_token_ids) for g in generations),
                "rollout_entropy": stats.rollout_entropy,
                "kl": stats.kl,
                "kl_coef": stats.kl_coef,
                "clip_fraction": stats.clip_fraction,
                "grad_norm": stats.grad_norm,
                "approx_kl": stats.approx_kl,
                "steps": stats.steps,
                "seconds": time.perf_counter() - started,
            }
        )
        last = rows[-1]
        print(
            f"cycle {cycle:2d}: ok {last['ok_share']:.0%} {args.target} {last['target_share']:.0%} "
            f"reward {last['reward_mean']:+.3f} "
            f"entropy {last['rollout_entropy']:.3f} KL {last['kl']:+.3f} coef {last['kl_coef']:.4f} "
            f"tokens {last['completion_tokens']:.0f} ({last['seconds']:.0f} s)",
            flush=True,
        )
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(
                json.dumps(
                    {
                        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                        "ppo": ppo.model_dump(),
                        "cycles": rows,
                    },
                    indent=1,
                )
            )

    if args.final:
        final = [g.completion for g in generator.generate([prompt] * args.final, seed=final_seed)]
        base_pass, base_failures, _ = check_sample(base)
        final_pass, final_failures, final_examples = check_sample(final)
        summary = {
            "base_pass_share": base_pass,
            "final_pass_share": final_pass,
            "identical_share": sum(a == b for a, b in zip(base, final, strict=True)) / args.final,
            "base_failures": base_failures,
            "final_failures": final_failures,
            "final_failure_examples": final_examples,
        }
        print(
            f"\n{args.final} completions, one seed: pass the checks {summary['base_pass_share']:.1%} (base) -> "
            f"{summary['final_pass_share']:.1%} (final); identical to the base's {summary['identical_share']:.1%}\n"
            f"failures by class: {summary['base_failures']} (base) -> {summary['final_failures']} (final)"
        )
        if night is not None:
            summary |= print_family_mix(night, base, final)
        if args.out is not None:
            args.out.write_text(json.dumps(json.loads(args.out.read_text()) | {"final": summary}, indent=1))

    print(f"\nper block of {args.block} cycles ({args.batch} experiments a cycle):")
    print(f"cycles   ok share  {args.target:>8}  reward   entropy  KL/completion  kl_coef")
    keys = ("ok_share", "target_share", "reward_mean", "rollout_entropy", "kl")
    for start in range(0, len(rows), args.block):
        block = rows[start : start + args.block]
        mean = {k: statistics.fmean(r[k] for r in block) for k in keys}
        print(
            f"{block[0]['cycle']:2d}-{block[-1]['cycle']:2d}    {mean['ok_share']:6.1%}  {mean['target_share']:8.1%}  "
            f"{mean['reward_mean']:+.3f}   {mean['rollout_entropy']:.3f}    {mean['kl']:+.3f}        "
            f"{block[-1]['kl_coef']:.4f}"
        )


def print_family_mix(night: NightFamilies, base: list[str], final: list[str]) -> dict[str, object]:
    """The model families of the base's and the final policy's completions that pass the checks, beside what the
    night paid each, and each mix's expected reward and net Sharpe; returns them."""
    mixes = {
        name: [family for family in (checked(c)[0] for c in completions) if family is not None]
        for name, completions in (("base", base), ("final", final))
    }
    print("\nfamily              night's reward  net Sharpe   base   final")
    for family in sorted(night.reward, key=night.reward.__getitem__, reverse=True):
        shares = [mixes[name].count(family) / max(len(mixes[name]), 1) for name in ("base", "final")]
        paid = f"{family:<20}{night.reward[family]:+14.3f}{night.sharpe[family]:+12.2f}"
        print(f"{paid}   {shares[0]:5.1%}  {shares[1]:5.1%}")
    expected = {name: night.mix(families) for name, families in mixes.items()}
    for name, (reward, sharpe) in expected.items():
        print(f"{name}: the family mix's expected reward {reward:+.4f}, net Sharpe {sharpe:+.3f}")
    return {
        "families": {name: {f: families.count(f) for f in sorted(set(families))} for name, families in mixes.items()},
        "mix_reward": {name: reward for name, (reward, _) in expected.items()},
        "mix_sharpe": {name: sharpe for name, (_, sharpe) in expected.items()},
    }


if __name__ == "__main__":
    main()
