"""Tiny random Mistral policies and hand-made experiences for the PPO, checkpoint and buffer tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import MistralConfig, MistralForCausalLM

from sharpe_rl.config import PolicyConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.model import Policy, load_policy

VOCAB = 64


def save_tiny_base(directory: Path, seed: int = 0) -> Path:
    """A random 2-layer, hidden-32 MistralForCausalLM saved with save_pretrained (no download)."""
    torch.manual_seed(seed)
    config = MistralConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,  # generation in tests always runs to max_new_tokens
        pad_token_id=0,
    )
    MistralForCausalLM(config).save_pretrained(directory)
    return directory


def tiny_policy(base: Path, **policy: object) -> Policy:
    return load_policy(PolicyConfig(model=str(base), device="cpu", **policy), seed=0)


def experience(
    prompt: list[int], completion: list[int], reward: float, index: int = 0, logprobs: list[float] | None = None
) -> Experience:
    return Experience(
        run="test",
        cycle=0,
        index=index,
        prompt_version="v5_rules",
        prompt=" ".join(map(str, prompt)),
        completion=" ".join(map(str, completion)),
        prompt_token_ids=prompt,
        completion_token_ids=completion,
        logprobs=logprobs if logprobs is not None else [0.0] * len(completion),
        reward=reward,
    )


def sequence_logprob(policy: Policy, e: Experience) -> float:
    """Total log-prob of the experience's completion under the policy."""
    ids = torch.tensor([e.prompt_token_ids + e.completion_token_ids])
    positions = torch.arange(len(e.completion_token_ids))[None, :] + len(e.prompt_token_ids) - 1
    with torch.no_grad():
        logits, _ = policy.completion_outputs(ids, torch.ones_like(ids), positions)
    return logits.log_softmax(-1).gather(-1, torch.tensor([e.completion_token_ids])[..., None]).sum().item()


def adapter_state(policy: Policy) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors (LoRA adapters and value head), by name."""
    return {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}
