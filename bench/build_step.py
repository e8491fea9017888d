"""One training step of the tiny policy's build, under the thread settings that matter on a shared CPU.

For each setting (torch threads 1 or 2; OpenMP threads that spin, sleep, or do OpenMP's default, a short spin
then sleep, while they wait: the default is what a process gets that loads torch before sharpe_rl), a
fresh interpreter builds the default corpus, tokenizer and model as `build_tiny_policy` does and
times `--steps` of its optimizer steps (after 5 warm-up steps). Prints the median wall-clock and
CPU milliseconds per step, the steps' share of one core, and the load average before and after:
on a busy machine the wall-clock numbers say more about the neighbours than about the build.

    .venv/bin/python bench/build_step.py [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = [(2, "ACTIVE"), (2, None), (2, "PASSIVE"), (1, "PASSIVE")]
WARMUP = 5


def time_steps(steps: int) -> dict:
    """In this process: build what the build builds, then time its steps."""
    import torch
    from transformers import MistralForCausalLM

    from sharpe_rl.config import TinyPolicyConfig
    from sharpe_rl.policy.corpus import build_corpus
    from sharpe_rl.policy.tiny import (
        batch_order,
        completion_loss,
        encode_example,
        model_config,
        train_tokenizer,
    )

    cfg = TinyPolicyConfig()
    corpus = build_corpus(cfg.corpus_size, cfg.seed, cfg.mistake_share)
    tokenizer = train_tokenizer([text for ex in corpus for text in (ex.prompt, ex.completion)], cfg.vocab_size)
    encoded = [encode_example(tokenizer, ex) for ex in corpus]
    torch.manual_seed(cfg.seed)
    model = MistralForCausalLM(model_config(cfg, tokenizer)).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), fused=True)
    batches = batch_order([len(ex.completion) for ex in encoded], cfg.batch_size, cfg.seed)
    wall, cpu = [], []
    for _ in range(WARMUP + steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        rows = next(batches)
        completions = [encoded[i].completion for i in rows]
        loss = completion_loss(model, encoded[rows[0]].prompt, completions, tokenizer.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return {"wall_ms": statistics.median(wall[WARMUP:]) * 1000, "cpu_ms": statistics.median(cpu[WARMUP:]) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(time_steps(args.steps)))
        return

    print(
        f"{'threads':>7} {'OpenMP wait':>11} {'wall ms':>8} {'CPU ms':>7} {'cores':>6}   load average before -> after"
    )
    for threads, policy in SETTINGS:
        before = os.getloadavg()[0]
        env = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
        env |= {"OMP_NUM_THREADS": str(threads)} | ({"OMP_WAIT_POLICY": policy} if policy else {})
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--steps", str(args.steps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{threads:>7} {(policy or 'default').lower():>11} {result['wall_ms']:>8.0f} {result['cpu_ms']:>7.0f} "
            f"{result['cpu_ms'] / result['wall_ms']:>6.2f}   {before:.1f} -> {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()
