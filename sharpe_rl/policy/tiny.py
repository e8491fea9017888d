"""Build the tiny policy: corpus -> byte-level BPE tokenizer -> small MistralForCausalLM -> save_pretrained.

The result is an ordinary Hugging Face checkpoint (safetensors weights, a fast tokenizer with
`<pad>` and `</s>`), so the RL loop loads it with `AutoModelForCausalLM.from_pretrained` exactly
as it loads Mistral-7B. The prompt format is plain and chat-free: the rendered prompt, then the
experiment JSON, then `</s>`. Prompt and completion are tokenized separately and concatenated,
which is what generation does (it tokenizes the prompt alone and samples after it).

Training is one loop on the CPU in fp32 (bf16 kernels crash some CPUs). The loss is computed on
completion tokens only: the prompt is context, not something the policy should learn to write.
Everything is seeded (corpus, initial weights, data order), so a build that completes its steps
is reproducible; `minutes` is a wall-clock cap, and a build it cuts short says so in
`build_info.json`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from torch.nn import functional as F
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.policy.corpus import CorpusExample, build_corpus

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
BUILD_INFO = "build_info.json"

#: (step, total steps, loss) after every optimizer step.
StepCallback = Callable[[int, int, float], None]


def policy_exists(path: Path) -> bool:
    """True when `path` holds a finished build (the build info is written last)."""
    return (path / BUILD_INFO).is_file()


def train_tokenizer(texts: Iterator[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer: any text encodes, frequent code fragments become single tokens."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    # Pre-tokens are the spec's JSON separators ('{"name": "', '", "features": "', '", "model": "',
    # '"}') and pieces of lines: a line of code inside a JSON string ends at the "\n" escape and
    # is cut before each ", " (one piece per argument), a line of prose ends at a real newline.
    # BPE then merges whole frequent pieces, such as "from sklearn.linear_model import
    # LogisticRegression\n" or ", learning_rate=0.05", into single tokens. At this model size that
    # is what keeps an import and its use, or an RSI's three lines, consistent (they become one
    # choice, or neighbouring ones) and makes each separator one easy token. Word-level
    # pre-tokens (GPT-2's regex) left completions three times longer, and the tiny model mixing
    # up imports and classes.
    separators = r'\{"name": "|", "(?:features|model)": "|"\}'
    code_piece = r'(?:, )?(?:[^\n\\",]|,(?! )|\\[^n])+(?:\\n)?|\\n'
    prose_line = r"[^\n]*\n|[^\n]+"
    pieces = f"{separators}|{code_piece}|{prose_line}"
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pieces), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",  # generation pads prompts on the left
        clean_up_tokenization_spaces=False,  # decoding must give back the exact text
    )


def encode_example(tokenizer: PreTrainedTokenizerFast, example: CorpusExample) -> tuple[list[int], int]:
    """Token ids of prompt + completion + EOS, and the prompt's length."""
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    completion_ids = tokenizer(example.completion)["input_ids"]
    return prompt_ids + completion_ids + [tokenizer.eos_token_id], len(prompt_ids)


def model_config(cfg: TinyPolicyConfig, tokenizer: PreTrainedTokenizerFast) -> MistralConfig:
    """Mistral's architecture (RMSNorm, RoPE, SwiGLU, grouped-query attention) at tiny size."""
    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.context_length,
        sliding_window=None,
        # A separate output embedding: most tokens of this vocabulary only ever occur in prompts
        # (the loss never asks for them), and tied to their input embedding they keep a share
        # of the output probability, enough to put a stray prompt line into 8% of completions.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def completion_loss(model: MistralForCausalLM, batch: Sequence[tuple[list[int], int]], pad_id: int) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens (and EOS) of right-padded rows."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    is_target = torch.zeros((len(batch), width), dtype=torch.bool)
    for row, (ids, prompt_length) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        is_target[row, prompt_length : len(ids)] = True
    hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # The hidden state at t predicts token t+1; the LM head runs only where that token is a target.
    predicts_target = is_target[:, 1:]
    logits = model.lm_head(hidden[:, :-1][predicts_target])
    return F.cross_entropy(logits, input_ids[:, 1:][predicts_target])


def learning_rate(step: int, cfg: TinyPolicyConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak at the last step."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(n_examples: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless deterministic batches: a fresh seeded shuffle of all examples every epoch."""
    rng = random.Random(seed)
    while True:
        order = list(range(n_examples))
        rng.shuffle(order)
        for start in range(0, n_examples - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def build_tiny_policy(out: Path, cfg: TinyPolicyConfig, on_step: StepCallback | None = None) -> dict:
    """Build the tiny policy into `out` (replacing what is there) and return its build info."""
    started = time.monotonic()
    corpus = build_corpus(cfg.corpus_size, cfg.seed, cfg.mistake_share)
    tokenizer = train_tokenizer((text for ex in corpus for text in (ex.prompt, ex.completion)), cfg.vocab_size)
    encoded = [encode_example(tokenizer, ex) for ex in corpus]

    torch.manual_seed(cfg.seed)
    model = MistralForCausalLM(model_config(cfg, tokenizer)).float()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    batches = batch_order(len(encoded), cfg.batch_size, cfg.seed)
    deadline = started + cfg.minutes * 60
    losses: list[float] = []
    for step in range(cfg.steps):
        if time.monotonic() > deadline:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        loss = completion_loss(model, [encoded[i] for i in next(batches)], tokenizer.pad_token_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, cfg.steps, losses[-1])
    model.eval()

    info = {
        "seed": cfg.seed,
        "config": cfg.model_dump(),
        "steps_planned": cfg.steps,
        "steps_done": len(losses),
        "stopped_by_time_limit": len(losses) < cfg.steps,
        "seconds": round(time.monotonic() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "loss": _loss_summary(losses),
        "corpus": _corpus_stats(corpus, encoded),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    _save(out, model, tokenizer, info)
    return info


def _loss_summary(losses: list[float]) -> dict:
    tail = losses[-20:]
    every = max(1, len(losses) // 20)
    return {
        "first": losses[0] if losses else None,
        "last_20_mean": sum(tail) / len(tail) if tail else None,
        "min": min(losses, default=None),
        "curve": [[step + 1, round(losses[step], 4)] for step in range(0, len(losses), every)],
    }


def _corpus_stats(corpus: list[CorpusExample], encoded: list[tuple[list[int], int]]) -> dict:
    prompt_tokens = [prompt_length for _, prompt_length in encoded]
    completion_tokens = [len(ids) - prompt_length for ids, prompt_length in encoded]
    return {
        "examples": len(corpus),
        "families": dict(Counter(ex.family for ex in corpus)),
        "prompt_versions": dict(Counter(ex.prompt_version for ex in corpus)),
        "mistakes": dict(Counter(ex.mistake for ex in corpus if ex.mistake)),
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(corpus), 1),
        "completion_tokens_mean": round(sum(completion_tokens) / len(corpus), 1),
        "completion_tokens_max": max(completion_tokens),
    }


def _save(out: Path, model: MistralForCausalLM, tokenizer: PreTrainedTokenizerFast, info: dict) -> None:
    """Write into a sibling directory, then swap it in, so `out` is never a half-written policy."""
    staging = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / BUILD_INFO).write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
