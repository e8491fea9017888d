"""The production policy: the Mistral-7B preset, gradient checkpointing, and the GPU path (skipped without a GPU)."""

from __future__ import annotations

import importlib.util
import logging
import math
from datetime import timedelta

import pytest
import torch
from peft.tuners.lora import LoraLayer
from ppo_fixtures import adapter_state, experience, save_tiny_base, tiny_policy
from pydantic import ValidationError
from transformers import AutoTokenizer

from sharpe_rl.config import MISTRAL_7B, EvalConfig, PolicyConfig, PPOConfig, RunConfig, mistral_7b_policy
from sharpe_rl.data.clock import Clock
from sharpe_rl.experience import Experience
from sharpe_rl.policy.generation import Generation, TransformersGenerator
from sharpe_rl.policy.model import LORA_TARGET_MODULES, load_policy, lora_config
from sharpe_rl.policy.ppo import PPOTrainer
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPT = render_prompt(
    "v5_rules", OHLCV_COLUMNS, timedelta(days=1), Clock.of(EvalConfig(), timedelta(days=1)), ["BTCUSDT", "ETHUSDT"]
)


# ---- the preset ----


def test_the_mistral_7b_preset_is_bf16_lora_on_every_projection_with_vllm():
    preset = mistral_7b_policy()
    assert preset.model == MISTRAL_7B and preset.device == "cuda"
    assert preset.backend == "vllm" and 0 < preset.vllm_gpu_memory < 1
    assert preset.gradient_checkpointing
    adapter = lora_config(preset)
    assert (adapter.r, adapter.lora_alpha) == (16, 32)
    assert set(adapter.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_the_preset_is_a_valid_flow_parameter_and_overrides_are_validated():
    config = RunConfig(name="mistral", policy=mistral_7b_policy())
    assert RunConfig.model_validate_json(config.model_dump_json()) == config  # what the Prefect form round-trips
    assert mistral_7b_policy(backend="transformers").backend == "transformers"
    with pytest.raises(ValidationError):
        mistral_7b_policy(vllm_gpu_memory=1.5)
    with pytest.raises(ValidationError):
        mistral_7b_policy(lora_rank=16)  # a misspelled field is refused, not ignored


# ---- gradient checkpointing (CPU) ----


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


def attention_calls(policy) -> list[int]:
    """A counter of the first decoder layer's attention forwards (a recompute in the backward pass counts too)."""
    calls = [0]
    layer = policy.model.get_base_model().model.layers[0]
    # A pre-hook: the recompute stops as soon as it has rebuilt what the backward pass needs, before the module returns.
    layer.self_attn.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_gradient_checkpointing_recomputes_activations_and_gives_the_same_update(base, caplog):
    batch = [
        experience([1, 2, 3, 4], [5, 6, 7, 8, 9], 1.0, index=0),
        experience([1, 2, 3, 4], [9, 8, 7], -1.0, index=1),
        experience([4, 5, 6], [6, 7, 8, 9, 10, 11], 0.5, index=2),
    ]
    caplog.set_level(logging.ERROR, logger="sharpe_rl.policy.ppo")  # hand-made log-probs: off-policy on purpose
    results = {}
    for checkpointing in (False, True):
        policy = tiny_policy(base, gradient_checkpointing=checkpointing)
        calls = attention_calls(policy)
        trainer = PPOTrainer(policy, PPOConfig(minibatch_size=2, epochs=2), seed=0)
        stats = [trainer.update(batch) for _ in range(2)]
        results[checkpointing] = (adapter_state(policy), stats, calls[0])

    (plain, plain_stats, plain_calls), (checkpointed, checkpointed_stats, checkpointed_calls) = results.values()
    # 2 updates x 2 epochs x 2 minibatches: one recompute per gradient step, none in the no-grad rollout passes.
    assert checkpointed_calls == plain_calls + 8
    for name, tensor in plain.items():
        torch.testing.assert_close(checkpointed[name], tensor, rtol=0, atol=1e-5)
    for before, after in zip(plain_stats, checkpointed_stats, strict=True):
        assert after.policy_loss == pytest.approx(before.policy_loss, abs=1e-5)
        assert after.kl == pytest.approx(before.kl, abs=1e-5)


def test_checkpointing_keeps_the_whole_policy_in_eval_mode(base):
    policy = tiny_policy(base, gradient_checkpointing=True)
    policy.eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    logits, _ = policy.completion_outputs(ids, torch.ones_like(ids), torch.tensor([[3]]))
    logits.sum().backward()
    assert not any(module.training for module in policy.modules())  # dropout stays off throughout


# ---- the GPU path (skipped without a GPU) ----


def scored(generations: list[Generation]) -> list[Experience]:
    """Rewards that differ between samples, so the update has something to follow."""
    return [
        Experience.from_generation(g, run="gpu", cycle=0, index=i, prompt_version="v5_rules", reward=float(i % 2))
        for i, g in enumerate(generations)
    ]


def sample_and_update(cfg: PolicyConfig, n: int, max_new_tokens: int) -> tuple:
    policy = load_policy(cfg)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    generations = TransformersGenerator(policy.model, tokenizer, max_new_tokens=max_new_tokens).generate(
        [PROMPT] * n, seed=0
    )
    before = adapter_state(policy)
    stats = PPOTrainer(policy, PPOConfig(minibatch_size=2, epochs=1)).update(scored(generations))
    return policy, before, stats


@needs_gpu
def test_on_a_gpu_the_base_is_bf16_the_adapters_fp32_and_an_update_runs(micro_policy):
    cfg = mistral_7b_policy(model=str(micro_policy), backend="transformers", max_new_tokens=32)
    policy, before, stats = sample_and_update(cfg, n=4, max_new_tokens=32)
    lora = [m for m in policy.modules() if isinstance(m, LoraLayer)]
    assert policy.model.get_base_model().get_input_embeddings().weight.dtype == torch.bfloat16
    assert all(m.lora_A["default"].weight.dtype == torch.float32 for m in lora)
    assert policy.value_head.weight.dtype == torch.float32 and policy.device.type == "cuda"
    assert all(math.isfinite(value) for value in (stats.policy_loss, stats.kl, stats.grad_norm))
    after = adapter_state(policy)
    assert any(not torch.equal(after[name], before[name]) for name in before)


@needs_gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM lives in its own GPU environment")
def test_vllm_samples_the_preset_policy_with_the_same_tokens_and_logprob_shape(pipeline_policy):
    from sharpe_rl.policy.generation import VLLMGenerator

    cfg = mistral_7b_policy(model=str(pipeline_policy), max_new_tokens=64)
    generations = VLLMGenerator(cfg).generate([PROMPT] * 4, seed=0)
    assert len(generations) == 4
    for g in generations:
        assert len(g.logprobs) == len(g.completion_token_ids) > 0
        assert g.prompt_token_ids == AutoTokenizer.from_pretrained(pipeline_policy)(PROMPT)["input_ids"]


def mistral_7b_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(MISTRAL_7B, "config.json"), str)


@pytest.mark.slow
@needs_gpu
@pytest.mark.skipif(not mistral_7b_cached(), reason=f"{MISTRAL_7B} is not in the local Hugging Face cache")
def test_mistral_7b_samples_and_updates_in_the_preset_memory_budget():
    torch.cuda.reset_peak_memory_stats()
    cfg = mistral_7b_policy(backend="transformers")
    _, before, stats = sample_and_update(cfg, n=4, max_new_tokens=64)
    assert len(before) == 2 * len(LORA_TARGET_MODULES) * 32 + 2  # A and B per projection per layer, value head
    assert stats.grad_norm > 0
    total = torch.cuda.get_device_properties(0).total_memory
    assert torch.cuda.max_memory_allocated() < (1 - cfg.vllm_gpu_memory) * total  # leaves vLLM its share
