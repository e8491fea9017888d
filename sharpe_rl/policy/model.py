"""The trainable policy: a base causal LM, LoRA adapters on it, and a scalar value head.

The reference policy of the KL penalty is the same network with the adapters switched off
(`Policy.reference()`), so no second copy of the base weights is ever held in memory. The
adapters start as an exact no-op (LoRA B = 0) and the value head starts at zero, so a freshly
loaded or reset policy is the base model, bit for bit.

`Policy.model` is the peft model: it has `.generate()` and is what the transformers generation
backend samples from; `save_pretrained` on it writes the adapter a vLLM backend loads.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from sharpe_rl.config import PolicyConfig

#: Mistral's attention and MLP projections: the layers LoRA adapts.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

_ADAPTER = "default"


def resolve_device(device: str) -> torch.device:
    """`auto` means the GPU when there is one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def base_dtype(device: torch.device) -> torch.dtype:
    """fp32 on the CPU (bf16 kernels crash some CPUs with an illegal instruction), bf16 on a GPU.

    Only the frozen base weights use this dtype: peft keeps the adapters in fp32, the value head
    is fp32, and log-probs are always computed from fp32 logits.
    """
    return torch.float32 if device.type == "cpu" else torch.bfloat16


class Policy(nn.Module):
    """Base LM + LoRA adapters + value head, with the reference policy one context manager away."""

    def __init__(self, model: PeftModel, value_head: nn.Linear, pad_token_id: int, seed: int) -> None:
        super().__init__()
        self.model = model
        self.value_head = value_head
        self.pad_token_id = pad_token_id  # any id works: padded positions are masked everywhere
        self.seed = seed  # the adapter's LoRA A init, so a reset policy equals a freshly loaded one

    @property
    def device(self) -> torch.device:
        return self.value_head.weight.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The LoRA adapters and the value head; the base weights stay frozen."""
        return [p for p in self.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Run the base model: the adapters are bypassed inside this block."""
        with self.model.disable_adapter():
            yield

    def completion_outputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logit_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits and values at the given positions of right-padded prompt+completion rows.

        `logit_positions[b, t]` is the position whose hidden state predicts completion token t of
        row b (prompt length - 1 + t). The LM head runs on those positions only, so the long
        prompts never pay for a vocabulary-sized projection. Returns fp32 logits
        `[batch, completion, vocab]` and values `[batch, completion]`.
        """
        causal_lm = self.model.get_base_model()
        with _checkpointed_layers(causal_lm):
            hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        index = logit_positions.unsqueeze(-1).expand(-1, -1, hidden.last_hidden_state.shape[-1])
        completion_hidden = hidden.last_hidden_state.gather(1, index)
        logits = causal_lm.get_output_embeddings()(completion_hidden).float()
        values = self.value_head(completion_hidden.float()).squeeze(-1)
        return logits, values

    def reset(self) -> None:
        """Return to the base model: LoRA A re-drawn from the policy's seed, LoRA B and value head zero."""
        _init_adapter(self.model, self.seed)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)


def lora_config(cfg: PolicyConfig) -> LoraConfig:
    """The adapter every checkpoint of a run shares (rank, scaling and targets from PolicyConfig)."""
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(LORA_TARGET_MODULES),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_policy(cfg: PolicyConfig, seed: int = 0) -> Policy:
    """Load the base model with `from_pretrained` and put fresh (no-op) adapters and a zero value head on it."""
    device = resolve_device(cfg.device)
    base = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=base_dtype(device)).to(device)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing (transformers' default). It also calls enable_input_require_grads, peft's
        # recipe for a frozen base, so gradients reach the adapters through recomputed layers whatever the mode.
        base.activation_checkpointing_enable()
    with warnings.catch_warnings():  # peft 0.21 reads a property that transformers 5 deprecates, on every wrap
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(base, lora_config(cfg))
    _init_adapter(model, seed)
    value_head = nn.Linear(base.config.hidden_size, 1, dtype=torch.float32, device=device)
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    pad_token_id = base.config.pad_token_id
    if pad_token_id is None:
        pad_token_id = base.config.eos_token_id if isinstance(base.config.eos_token_id, int) else 0
    return Policy(model, value_head, pad_token_id=pad_token_id, seed=seed)


@contextmanager
def _checkpointed_layers(causal_lm: PreTrainedModel) -> Iterator[None]:
    """Let activation checkpointing act in a gradient pass although the policy is in eval mode.

    transformers checkpoints a decoder layer only while that layer is in training mode, and the PPO
    update runs in eval mode (no dropout, so its first probability ratio is exactly 1). Only the
    layer modules themselves are flagged as training: their attention, MLP and LoRA-dropout
    children stay in eval mode, so the numbers are those of the eval-mode forward.
    """
    layers = [m for m in causal_lm.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]
    if not layers or not torch.is_grad_enabled():
        yield
        return
    modes = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, mode in zip(layers, modes, strict=True):
            layer.training = mode


def _init_adapter(model: PeftModel, seed: int) -> None:
    """Draw LoRA A from `seed` and zero LoRA B, without touching the global RNG stream.

    peft's own init consumes the global RNG in an order that depends on module construction, so
    re-initialising here under a fixed seed is what makes `reset()` reproduce a fresh load exactly.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters(_ADAPTER, init_lora_weights=True)
