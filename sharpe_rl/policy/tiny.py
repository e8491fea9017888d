"""Build the tiny policy: corpus -> byte-level BPE tokenizer -> small MistralForCausalLM -> save_pretrained.

The result is an ordinary Hugging Face checkpoint (safetensors weights, a fast tokenizer with
`<pad>` and `</s>`), so the RL loop loads it with `AutoModelForCausalLM.from_pretrained` exactly
as it loads Mistral-7B. The prompt format is plain and chat-free: the rendered prompt, then the
experiment JSON, then `</s>`. Prompt and completion are tokenized separately and concatenated,
which is what generation does (it tokenizes the prompt alone and samples after it).

Training is one loop on the CPU in fp32 (bf16 kernels crash some CPUs). The loss is computed on
completion tokens only: the prompt is context, not something the policy should learn to write.
Batches group examples of similar length (see `batch_order`), so little compute goes to padding.

The build always runs all its steps, and everything is seeded (corpus, initial weights, data
order): two builds with the same seed on the same machine give the same weights bit for bit.
Another CPU (other vector instructions, another BLAS kernel) may differ in the last bits.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import tokenizers
import torch
import transformers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from torch.nn import functional as F
from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.policy.corpus import CorpusExample, build_corpus
from sharpe_rl.policy.knowledge import BUILD_INFO, TINY_MEMORY

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
#: Batches sorted by length together (see `batch_order`).
SORT_WINDOW = 8

#: (step, total steps, loss) after every optimizer step.
StepCallback = Callable[[int, int, float], None]


def policy_exists(path: Path) -> bool:
    """True when `path` holds a finished build (the build info is written last)."""
    return (path / BUILD_INFO).is_file()


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer whose tokens are whole pieces of code and prose: any text encodes.

    BPE (with at most `vocab_size` tokens) finds the pieces. Its vocabulary also keeps every
    intermediate merge on the way to a long piece, and about two thirds of it never occurs in the
    encoded corpus, yet each of those tokens costs a row of the output layer, the largest matrix
    product of every training step. So the tokenizer returned is a unigram model over only the
    pieces that BPE's encoding of `texts` uses, scored by their frequency, plus the 256 byte
    symbols (scored below any piece, so that they only fill in for text no piece covers). On the
    default corpus it segments every text exactly as BPE did, with a third of the vocabulary.
    """
    bpe = tokenizers.Tokenizer(models.BPE())
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
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pieces), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)

    uses = Counter(token for encoding in bpe.encode_batch(texts) for token in encoding.tokens)
    total = sum(uses.values())
    scores = {piece: math.log(count / total) for piece, count in sorted(uses.items(), key=lambda kv: (-kv[1], kv[0]))}
    tokenizer = _unigram(scores, bpe.pre_tokenizer)
    # The unigram model picks the likeliest segmentation, which can leave out a piece BPE used
    # (one of a few per corpus); without those, no token of the vocabulary is dead weight.
    kept = {token for encoding in tokenizer.encode_batch(texts) for token in encoding.tokens}
    tokenizer = _unigram({piece: score for piece, score in scores.items() if piece in kept}, bpe.pre_tokenizer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        padding_side="left",  # generation pads prompts on the left
        clean_up_tokenization_spaces=False,  # decoding must give back the exact text
    )


def _unigram(scores: dict[str, float], pre_tokenizer: pre_tokenizers.PreTokenizer) -> tokenizers.Tokenizer:
    """A unigram tokenizer over `scores`' pieces (log-probabilities), the specials and the byte symbols."""
    byte_score = min(scores.values()) - 10.0  # a byte symbol only fills in where no piece fits
    vocab = [(PAD_TOKEN, 0.0), (EOS_TOKEN, 0.0), *scores.items()]
    vocab += [(symbol, byte_score) for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()) if symbol not in scores]
    tokenizer = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=None))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


class Encoded(NamedTuple):
    """One corpus example as token ids."""

    prompt: list[int]
    completion: list[int]  # ends with EOS


def encode_example(tokenizer: PreTrainedTokenizerFast, example: CorpusExample) -> Encoded:
    """The prompt's and the completion's token ids, each tokenized alone as generation does."""
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    completion_ids = tokenizer(example.completion)["input_ids"]
    return Encoded(prompt_ids, [*completion_ids, tokenizer.eos_token_id])


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
        # A separate output embedding: many tokens of this vocabulary only ever occur in prompts
        # (the loss never asks for them), and tied to their input embedding they keep a share
        # of the output probability, enough to put a stray prompt line into 8% of completions.
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def completion_loss(
    model: MistralForCausalLM, prompt: list[int], completions: Sequence[list[int]], pad_id: int
) -> torch.Tensor:
    """Mean next-token cross-entropy over `completions`, each written right after the same `prompt`.

    The prompt runs once, without gradient, and every row attends to its keys and values (the
    KV cache, as in generation); the rows hold the prompt's last token (whose hidden state
    predicts a completion's first token) and a completion, right-padded. A corpus completion does
    not depend on its prompt (the model only has to read past any prompt), so a batch shares
    one, and the loss is the same as with each row's own copy of it. Per example that skips the
    prompt's ~60 tokens of forward and backward pass, and the backward pass through its keys and
    values: the step costs half as much, with the same quality of completions.
    """
    width = 1 + max(len(completion) for completion in completions)
    input_ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(completions), len(prompt) - 1 + width), dtype=torch.long)
    attention_mask[:, : len(prompt)] = 1
    for row, completion in enumerate(completions):
        input_ids[row, 0] = prompt[-1]
        input_ids[row, 1 : 1 + len(completion)] = torch.tensor(completion)
        attention_mask[row, len(prompt) : len(prompt) + len(completion)] = 1
    with torch.no_grad():
        cache = model.model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True).past_key_values
    cache.batch_repeat_interleave(len(completions))
    positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + width).expand(len(completions), -1)
    hidden = model.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, past_key_values=cache
    ).last_hidden_state
    # The hidden state at t predicts token t+1; the LM head runs only where that token is a target.
    predicts_target = attention_mask[:, len(prompt) :].bool()
    logits = model.lm_head(hidden[:, :-1][predicts_target])
    return F.cross_entropy(logits, input_ids[:, 1:][predicts_target])


def learning_rate(step: int, cfg: TinyPolicyConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak at the last step."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(lengths: Sequence[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless deterministic batches of examples of similar length.

    Every epoch: a fresh seeded shuffle, cut into windows of `SORT_WINDOW` batches; each window
    is sorted by length and cut into batches, and the epoch's batches are shuffled. A row is
    padded to the longest of its batch, and with random batches a third of the completion
    tokens computed were padding (a torch model's code is three times as long as a k-NN's);
    sorted windows bring that under a tenth, while a batch still draws its examples from a
    random part of the corpus.
    """
    rng = random.Random(seed)
    window = batch_size * SORT_WINDOW
    while True:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            by_length = sorted(order[start : start + window], key=lambda i: lengths[i])
            batches += [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
        rng.shuffle(batches)
        yield from (batch for batch in batches if len(batch) == batch_size)


def build_tiny_policy(out: Path, cfg: TinyPolicyConfig, on_step: StepCallback | None = None) -> dict:
    """Build the tiny policy into `out` (replacing what is there) and return its build info."""
    started, cpu_started = time.monotonic(), time.process_time()
    corpus = build_corpus(cfg.corpus_size, cfg.seed, cfg.mistake_share)
    tokenizer = train_tokenizer([text for ex in corpus for text in (ex.prompt, ex.completion)], cfg.vocab_size)
    encoded = [encode_example(tokenizer, ex) for ex in corpus]

    torch.manual_seed(cfg.seed)
    model = MistralForCausalLM(model_config(cfg, tokenizer)).float()
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=0.0, fused=True
    )
    batches = batch_order([len(ex.completion) for ex in encoded], cfg.batch_size, cfg.seed)
    losses: list[float] = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        rows = next(batches)
        # The batch's prompt: its first example's, which is a random one (see `batch_order`).
        prompt = encoded[rows[0]].prompt
        loss = completion_loss(model, prompt, [encoded[i].completion for i in rows], tokenizer.pad_token_id)
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
        "steps": len(losses),
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(load, 2) for load in os.getloadavg()],  # the seconds depend on what else ran
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocabulary": len(tokenizer),
        "loss": _loss_summary(losses),
        "corpus": _corpus_stats(corpus, encoded),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "market_memory": TINY_MEMORY,
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


def _corpus_stats(corpus: list[CorpusExample], encoded: list[Encoded]) -> dict:
    prompt_tokens = [len(ex.prompt) for ex in encoded]
    completion_tokens = [len(ex.completion) - 1 for ex in encoded]  # without EOS
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
