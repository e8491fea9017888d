"""How fast the tiny policy is on this machine's CPU: build, generation, PPO update, memory.

- build:      the wall-clock and CPU time `sharpe-rl build-policy` took, and the load average at
              its end, read from the policy's `build_info.json`; with `--build` (or when there is
              no policy yet) the build runs here.
- generation: completion tokens per second of the TransformersGenerator sampling `--batch` (16)
              completions of the v5_rules prompt at the default PolicyConfig (temperature 1,
              max_new_tokens), median of `--rounds` cycles after a warm-up cycle.
- update:     seconds of one `PPOTrainer.update` (default PPOConfig) on the batch just sampled
              (on-policy, as in a run), with rewards drawn at random; per update and per sample.
- memory:     the process's peak resident set size (getrusage maxrss) after loading, and at the end.

    .venv/bin/python bench/policy_speed.py [--policy runs/policy/tiny] [--batch 16] [--rounds 3] [--build]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from datetime import timedelta
from pathlib import Path

import torch
from transformers import AutoTokenizer
from transformers.utils import logging as transformers_logging

from sharpe_rl.config import PolicyConfig, PPOConfig, RunConfig, TinyPolicyConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.generation import Generation, TransformersGenerator
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.prompts import run_prompt
from sharpe_rl.policy.tiny import BUILD_INFO, build_tiny_policy, policy_exists

PROMPT = run_prompt(RunConfig(), timedelta(days=1), ["BTCUSDT", "ETHUSDT", "SOLUSDT"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_summary(policy: Path, build: bool) -> str:
    """The build's wall-clock and CPU seconds, its steps, and how busy the machine was."""
    if build or not policy_exists(policy):
        info, source = build_tiny_policy(policy, TinyPolicyConfig()), "built here"
    else:
        info, source = json.loads((policy / BUILD_INFO).read_text()), f"from {policy / BUILD_INFO}"
    if "cpu_seconds" not in info:
        return f"{info['seconds']:.0f} s ({source}; an older build without CPU time: use --build)"
    return (
        f"{info['seconds']:.0f} s, {info['cpu_seconds']:.0f} CPU s on {info['torch_threads']} threads, "
        f"{info['steps']} steps, load average {info['load_average'][0]:.1f} at the end ({source})"
    )


def scored(generations: list[Generation], rng: random.Random) -> list[Experience]:
    """The batch as the PPO step receives it, with rewards in the shaped range [-1.5, 1]."""
    return [
        Experience.from_generation(
            g, run="bench", cycle=0, index=i, prompt_version="v5_rules", reward=rng.uniform(-1.5, 1.0)
        )
        for i, g in enumerate(generations)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=Path(PolicyConfig().model))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--build", action="store_true", help="Build the tiny policy here and time it.")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()

    print(f"build: {build_summary(args.policy, args.build)}")

    cfg = PolicyConfig(model=str(args.policy), device="cpu", generation_batch_size=args.batch)
    policy = load_policy(cfg)
    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    generator = TransformersGenerator(
        policy.model, tokenizer, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.generation_batch_size
    )
    parameters = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    print(
        f"policy: {args.policy}, {parameters / 1e6:.2f}M base parameters, {torch.get_num_threads()} torch threads; "
        f"peak RSS after loading {peak_rss_mb():.0f} MB"
    )

    # Cycles as the pipeline runs them: sample a batch, then one PPO update on it (on-policy).
    prompts, rng = [PROMPT] * args.batch, random.Random(0)
    trainer = PPOTrainer(policy, PPOConfig())
    trainer.update(scored(generator.generate(prompts, seed=0), rng))  # warm-up: allocations, kernel selection
    rates, durations, lengths = [], [], []
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        generations = generator.generate(prompts, seed=round_)
        elapsed = time.perf_counter() - start
        lengths += [len(g.completion_token_ids) for g in generations]
        rates.append(sum(len(g.completion_token_ids) for g in generations) / elapsed)
        start = time.perf_counter()
        trainer.update(scored(generations, rng))
        durations.append(time.perf_counter() - start)
    print(
        f"generation: median {statistics.median(rates):.0f} completion tokens/s at batch {args.batch} "
        f"(min {min(rates):.0f}, max {max(rates):.0f}; {statistics.mean(lengths):.0f} tokens per completion "
        f"after a {len(generations[0].prompt_token_ids)}-token prompt)"
    )
    median = statistics.median(durations)
    print(
        f"update: median {median:.2f} s per update of {args.batch} (min {min(durations):.2f}, "
        f"max {max(durations):.2f}), {median / args.batch * 1000:.0f} ms per sample; "
        f"epochs={trainer.cfg.epochs}, minibatch={trainer.cfg.minibatch_size}"
    )
    print(f"peak RSS: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
