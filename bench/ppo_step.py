"""Seconds and memory of one PPO update on the tiny policy's shape, on this machine's CPU.

Builds a random MistralForCausalLM with the tiny policy's architecture and tokenizer (corpus and
BPE as `sharpe-rl build-policy` makes them; no training, no download), puts LoRA adapters and a
value head on it through `load_policy`, and times `PPOTrainer.update` on a synthetic scored batch:
`--batch` completions of about `--completion` tokens after prompts of about `--prompt` tokens, with
the default PPOConfig (epochs, minibatch size). Prints seconds per update and per sample, and the
process's peak resident memory before and after the updates.

    .venv/bin/python bench/ppo_step.py [--batch 8] [--prompt 600] [--completion 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import statistics
import tempfile
import time

import torch
from transformers import MistralForCausalLM

from sharpe_rl.config import PolicyConfig, PPOConfig, TinyPolicyConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.corpus import build_corpus
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.tiny import model_config, train_tokenizer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synthetic_batch(size: int, prompt: int, completion: int, vocab: int, group_size: int) -> list[Experience]:
    """Random token ids around the requested lengths, `group_size` completions per prompt, rewards in [-1.5, 1]."""
    rng = random.Random(0)
    batch = []
    for index in range(size):
        if index % group_size == 0:
            prompt_ids = [rng.randrange(3, vocab) for _ in range(rng.randint(prompt - 50, prompt + 50))]
        completion_ids = [rng.randrange(3, vocab) for _ in range(rng.randint(completion - 100, completion + 100))]
        batch.append(
            Experience(
                run="bench",
                cycle=0,
                index=index,
                prompt_version="bench",
                prompt="",
                completion="",
                prompt_token_ids=prompt_ids,
                completion_token_ids=completion_ids,
                logprobs=[0.0] * len(completion_ids),
                reward=rng.uniform(-1.5, 1.0),
            )
        )
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=600)
    parser.add_argument("--completion", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--advantage", choices=["gae", "group"], default="gae")
    args = parser.parse_args()
    # The synthetic completions were never sampled from the policy, so the off-policy warning is expected noise.
    logging.getLogger("sharpe_rl.policy.ppo").setLevel(logging.ERROR)

    # The tiny policy's architecture exactly (its tokenizer sets the vocabulary), with random weights.
    tiny = TinyPolicyConfig()
    corpus = build_corpus(tiny.corpus_size, tiny.seed, tiny.mistake_share)
    tokenizer = train_tokenizer([text for ex in corpus for text in (ex.prompt, ex.completion)], tiny.vocab_size)
    config = model_config(tiny, tokenizer)
    ppo = PPOConfig(advantage=args.advantage)
    with tempfile.TemporaryDirectory() as directory:
        torch.manual_seed(0)
        MistralForCausalLM(config).save_pretrained(directory)
        policy = load_policy(PolicyConfig(model=directory, device="cpu"))
    trainer = PPOTrainer(policy, ppo)
    base_params = sum(p.numel() for p in policy.parameters() if not p.requires_grad)
    trainable = sum(p.numel() for p in policy.trainable_parameters())
    batch = synthetic_batch(args.batch, args.prompt, args.completion, len(tokenizer), ppo.group_size)
    tokens = sum(len(e.prompt_token_ids) + len(e.completion_token_ids) for e in batch)
    print(
        f"policy: {base_params / 1e6:.2f}M base + {trainable / 1e3:.1f}k trainable (LoRA r={PolicyConfig().lora_r} "
        f"+ value head), {torch.get_num_threads()} torch threads"
    )
    print(
        f"batch: {len(batch)} completions, {tokens} tokens; advantage={ppo.advantage}, epochs={ppo.epochs}, "
        f"minibatch={ppo.minibatch_size}"
    )

    before = peak_rss_mb()
    trainer.update(batch)  # warm-up: first-call allocations and kernel selection
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        trainer.update(batch)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    print(
        f"update: median {median:.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}, {args.repeats} runs), "
        f"{median / len(batch):.3f} s per sample"
    )
    print(f"peak RSS: {before:.0f} MB after loading, {peak_rss_mb():.0f} MB after the updates")


if __name__ == "__main__":
    main()
