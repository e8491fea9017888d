"""Generation backends: one small interface that returns text, token ids and per-token log-probs.

Two backends sit behind the `Generator` protocol, built by `make_generator(PolicyConfig)`:

- `TransformersGenerator` (default, CPU or GPU): a plain KV-cached sampling loop over any causal
  LM, including a peft-wrapped one, so the current LoRA adapter is what samples. Prompts are
  batched with left padding.
- `VLLMGenerator` (GPU, optional): vLLM with the current LoRA adapter loaded per cycle; it needs
  its own environment (docs/gpu.md).

Seeding: completion i of a call is drawn from its own random stream, seeded by (seed, i). The
same prompts and seed give the same completions, whatever the batch size or the other prompts.

Log-probs: `Generation.logprobs[t]` is the log-probability of completion token t under the
distribution it was actually sampled from. With temperature 1, top_p 1 and no constraint that is
the model's own distribution, which is what PPO's probability ratio needs. With another
temperature, nucleus truncation or constrained JSON it is the tempered / truncated /
masked-and-renormalised distribution, which is not the model's: the samples are then off-policy
and the PPO update should use log-probs recomputed by a forward pass (it does, and reports the gap).

The completion token ids end with EOS when the policy ended the completion (ending is an action
too); `completion` is the decoded text without it. A completion cut off at `max_new_tokens` has
no EOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sharpe_rl.config import PolicyConfig
from sharpe_rl.policy.constrained import SpecJsonAutomaton, SpecJsonLogitsProcessor
from sharpe_rl.policy.model import base_dtype, resolve_device
from sharpe_rl.spec import ExperimentSpec


@dataclass(frozen=True)
class Generation:
    """One sampled completion, with what PPO needs to score it again later."""

    prompt: str
    completion: str
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    logprobs: list[float]  # log-prob of each completion token under the sampling policy


class Generator(Protocol):
    """A policy that samples completions for prompts."""

    def generate(self, prompts: list[str], seed: int) -> list[Generation]: ...


def row_seed(seed: int, index: int) -> int:
    """The seed of completion `index` of a call seeded with `seed` (independent streams per row)."""
    return int(np.random.SeedSequence([seed % 2**64, index]).generate_state(1)[0])


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the distribution tokens are drawn from: tempered, then nucleus-truncated."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logprobs, order = logprobs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does.
        mass_before = sorted_logprobs.exp().cumsum(dim=-1) - sorted_logprobs.exp()
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logprobs = torch.log_softmax(logprobs.masked_fill(drop, float("-inf")), dim=-1)
    return logprobs


class TransformersGenerator:
    """Samples from a transformers causal LM (or a peft model wrapping one) with a KV cache."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        constrained_json: bool = False,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.eos_id = tokenizer.eos_token_id
        # Any id works for padding (padded positions are masked); Mistral's tokenizer has no pad token.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        vocab_size = model.get_output_embeddings().out_features
        self.automaton = SpecJsonAutomaton(tokenizer, vocab_size) if constrained_json else None

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        generations: list[Generation] = []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling
        try:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                seeds = [row_seed(seed, start + i) for i in range(len(chunk))]
                generations.extend(self._generate_batch(chunk, seeds))
        finally:
            self.model.train(was_training)
        return generations

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str], seeds: list[int]) -> list[Generation]:
        device = self.model.get_input_embeddings().weight.device
        prompt_ids = [self.tokenizer(prompt)["input_ids"] for prompt in prompts]
        batch, width = len(prompts), max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((batch, width), self.pad_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros((batch, width), dtype=torch.long, device=device)
        for row, ids in enumerate(prompt_ids):  # left padding: every prompt ends at the last column
            input_ids[row, width - len(ids) :] = torch.tensor(ids, device=device)
            attention_mask[row, width - len(ids) :] = 1
        positions = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        streams = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        processor = SpecJsonLogitsProcessor(self.automaton, self.max_new_tokens) if self.automaton else None

        sequence = input_ids  # prompt + sampled so far, what a logits processor reads
        step_ids, step_positions, cache = input_ids, positions, None
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens_per_step, logprobs_per_step = [], []
        for _ in range(self.max_new_tokens):
            output = self.model(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=step_positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = output.past_key_values
            logits = output.logits[:, -1, :].float()
            if processor is not None:
                logits = processor(sequence, logits)
            logprobs = sampling_logprobs(logits, self.temperature, self.top_p)
            probs = logprobs.exp()
            tokens = torch.cat([torch.multinomial(probs[row], 1, generator=streams[row]) for row in range(batch)])
            tokens = tokens.masked_fill(finished, self.pad_id)
            tokens_per_step.append(tokens)
            logprobs_per_step.append(logprobs.gather(1, tokens[:, None]).squeeze(1))
            finished |= tokens == self.eos_id
            if finished.all():
                break
            sequence = torch.cat([sequence, tokens[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, torch.ones((batch, 1), dtype=torch.long, device=device)], 1)
            step_ids, step_positions = tokens[:, None], step_positions[:, -1:] + 1

        sampled = torch.stack(tokens_per_step, dim=1).tolist()
        sampled_logprobs = torch.stack(logprobs_per_step, dim=1).tolist()
        generations = []
        for row, prompt in enumerate(prompts):
            length = sampled[row].index(self.eos_id) + 1 if self.eos_id in sampled[row] else len(sampled[row])
            ids = sampled[row][:length]
            generations.append(
                Generation(
                    prompt=prompt,
                    completion=self.tokenizer.decode(
                        [t for t in ids if t != self.eos_id], clean_up_tokenization_spaces=False
                    ),
                    prompt_token_ids=prompt_ids[row],
                    completion_token_ids=ids,
                    logprobs=sampled_logprobs[row][:length],
                )
            )
        return generations


class VLLMGenerator:
    """vLLM on a GPU. Call `set_adapter` after each PPO update so the next cycle samples from it."""

    def __init__(self, cfg: PolicyConfig) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(
                "the vllm backend needs vLLM, which lives in its own GPU environment (it pins another "
                "torch and transformers): see docs/gpu.md, or use backend: transformers"
            ) from exc
        self.cfg = cfg
        self.llm = vllm.LLM(
            model=cfg.model,
            enable_lora=True,
            max_lora_rank=cfg.lora_r,
            gpu_memory_utilization=cfg.vllm_gpu_memory,
            # Log-probs of the distribution actually sampled from (after temperature and top-p),
            # as TransformersGenerator reports them; vLLM's default is the raw model's.
            logprobs_mode="processed_logprobs",
            seed=0,
        )
        self.adapter = None  # a vllm LoRARequest, or None for the base model
        self.adapter_versions = 0

    def set_adapter(self, path: Path | None) -> None:
        """Sample with the LoRA adapter saved at `path` (peft `save_pretrained`); None for the base model."""
        from vllm.lora.request import LoRARequest

        if path is None:
            self.adapter = None
            return
        # vLLM caches adapters by id: a new id per version, or it keeps serving the old weights.
        self.adapter_versions += 1
        self.adapter = LoRARequest(f"policy-v{self.adapter_versions}", self.adapter_versions, str(path))

    def generate(self, prompts: list[str], seed: int) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = (
            StructuredOutputsParams(json=ExperimentSpec.model_json_schema(), disable_any_whitespace=True)
            if self.cfg.constrained_json
            else None
        )
        params = [
            SamplingParams(
                temperature=self.cfg.temperature,
                top_p=self.cfg.top_p,
                max_tokens=self.cfg.max_new_tokens,
                seed=row_seed(seed, i),
                logprobs=0,  # only the sampled token's log-prob
                structured_outputs=structured,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(prompts, params, lora_request=self.adapter, use_tqdm=False)
        generations = []
        for output in outputs:
            sample = output.outputs[0]
            token_ids = list(sample.token_ids)
            generations.append(
                Generation(
                    prompt=output.prompt,
                    completion=sample.text,
                    prompt_token_ids=list(output.prompt_token_ids),
                    completion_token_ids=token_ids,
                    logprobs=[step[token].logprob for step, token in zip(sample.logprobs, token_ids, strict=True)],
                )
            )
        return generations


def policy_source(cfg: PolicyConfig) -> str:
    """`cfg.model` if it names a local directory or a Hugging Face id ("owner/name"); else a clear error."""
    if not Path(cfg.model).exists() and cfg.model.count("/") != 1:
        raise FileNotFoundError(
            f"no policy at {cfg.model}: build the tiny one with `sharpe-rl build-policy --out {cfg.model}`"
        )
    return cfg.model


def make_generator(
    cfg: PolicyConfig, model: PreTrainedModel | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> Generator:
    """The configured backend. Pass the (peft-wrapped) policy being trained as `model`, so it samples.

    For the transformers backend, whatever is not passed is loaded from `cfg.model` (fp32 on the
    CPU, bf16 on a GPU). The vllm backend always loads `cfg.model` itself and samples the adapter
    last given to its `set_adapter`.
    """
    if cfg.backend == "vllm":
        if model is not None:
            raise ValueError("the vllm backend loads cfg.model itself; hand it adapters with set_adapter()")
        return VLLMGenerator(cfg)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(policy_source(cfg))
    if model is None:
        device = resolve_device(cfg.device)
        model = AutoModelForCausalLM.from_pretrained(policy_source(cfg), dtype=base_dtype(device)).to(device)
    return TransformersGenerator(
        model,
        tokenizer,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        constrained_json=cfg.constrained_json,
        batch_size=cfg.generation_batch_size,
    )
