"""The effect of constrained JSON decoding on the json_parse rate, and what it costs in time.

Generates N completions (alternating `v4_example` / `v5_rules` prompts rendered for the real daily
panel) with and without the constraint, same seeds, and prints for each: the share that is a
json_parse failure, the share that is a schema failure, generation seconds and tokens/s. It does
so for the built tiny policy and for an untrained model of the same architecture and tokenizer
(random weights), where the policy itself cannot write JSON and only the constraint can.

    .venv/bin/python bench/constrained_json.py [--policy runs/policy/tiny] [--n 64] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch
from tiny_policy_quality import DEFAULT_PANEL, bench_prompts
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sharpe_rl.config import PolicyConfig
from sharpe_rl.policy.generation import TransformersGenerator
from sharpe_rl.spec import SpecError, parse_spec


def measure(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], seed: int, constrained: bool
) -> dict[str, float]:
    cfg = PolicyConfig()
    generator = TransformersGenerator(
        model,
        tokenizer,
        max_new_tokens=cfg.max_new_tokens,
        constrained_json=constrained,
        batch_size=cfg.generation_batch_size,
    )
    started = time.perf_counter()
    generations = generator.generate(prompts, seed=seed)
    seconds = time.perf_counter() - started
    outcomes: Counter[str] = Counter()
    for generation in generations:
        try:
            parse_spec(generation.completion)
            outcomes["ok"] += 1
        except SpecError as exc:
            outcomes[str(exc.error_class)] += 1
    tokens = sum(len(g.completion_token_ids) for g in generations)
    return {
        "json_parse": outcomes["json_parse"] / len(prompts),
        "schema": outcomes["schema"] / len(prompts),
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=Path(PolicyConfig().model))
    parser.add_argument("--panel", type=Path, default=DEFAULT_PANEL)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.policy)
    trained = AutoModelForCausalLM.from_pretrained(args.policy)
    torch.manual_seed(args.seed)
    untrained = AutoModelForCausalLM.from_config(trained.config)
    prompts = bench_prompts(args.panel, args.n)

    print(f"{args.n} completions per row, seed {args.seed}, max_new_tokens {PolicyConfig().max_new_tokens}")
    print(f"{'model':<10} {'constrained':<12} {'json_parse':>10} {'schema':>8} {'seconds':>8} {'tokens/s':>9}")
    for label, model in (("tiny", trained), ("untrained", untrained)):
        rows = {flag: measure(model, tokenizer, prompts, args.seed, flag) for flag in (False, True)}
        for constrained, row in rows.items():
            print(
                f"{label:<10} {constrained!s:<12} {row['json_parse']:>10.1%} {row['schema']:>8.1%} "
                f"{row['seconds']:>8.1f} {row['tokens_per_second']:>9.0f}"
            )
        cost = rows[True]["seconds"] / rows[False]["seconds"]
        print(f"{label:<10} time with / without the constraint: {cost:.2f}x")


if __name__ == "__main__":
    main()
