"""The tiny policy builder: a real from_pretrained checkpoint, deterministic in its seed."""

import hashlib
import json

import pytest
import torch
from pydantic import ValidationError
from tokenizers import pre_tokenizers
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM
from typer.testing import CliRunner

from cli.app import app
from sharpe_rl.config import TinyPolicyConfig
from sharpe_rl.policy.corpus import build_corpus
from sharpe_rl.policy.tiny import (
    BUILD_INFO,
    build_tiny_policy,
    completion_loss,
    encode_example,
    model_config,
    policy_exists,
    train_tokenizer,
)


def test_the_build_loads_through_from_pretrained(micro_policy, micro_policy_config):
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    assert isinstance(model, MistralForCausalLM)
    assert (micro_policy / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == micro_policy_config.num_layers
    assert model.config.hidden_size == micro_policy_config.hidden_size
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"
    assert model.config.eos_token_id == tokenizer.eos_token_id and len(tokenizer) == model.config.vocab_size


def test_the_tokenizer_round_trips_text_exactly(micro_policy):
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    example = build_corpus(1, seed=5, mistake_share=0.0)[0]
    for text in (example.prompt, example.completion, "unseen: ünïcödé → ✓ {'df': 1}\n"):
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_the_vocabulary_is_the_pieces_the_corpus_uses_and_the_byte_symbols(micro_policy_config):
    corpus = build_corpus(micro_policy_config.corpus_size, seed=0, mistake_share=0.05)
    texts = [text for example in corpus for text in (example.prompt, example.completion)]
    tokenizer = train_tokenizer(texts, micro_policy_config.vocab_size)
    used = {token for text in texts for token in tokenizer.tokenize(text)}
    vocabulary = set(tokenizer.get_vocab())
    assert vocabulary == used | set(pre_tokenizers.ByteLevel.alphabet()) | {"<pad>", "</s>"}
    assert len(vocabulary) < micro_policy_config.vocab_size


def test_the_shared_prompt_loss_equals_each_completion_after_its_own_copy_of_the_prompt(micro_policy):
    tokenizer = AutoTokenizer.from_pretrained(micro_policy)
    examples = [encode_example(tokenizer, example) for example in build_corpus(4, seed=2, mistake_share=0.0)]
    torch.manual_seed(0)
    model = MistralForCausalLM(model_config(TinyPolicyConfig(hidden_size=32, intermediate_size=64), tokenizer))
    prompt, completions = examples[0].prompt, [example.completion for example in examples]
    assert len({len(c) for c in completions}) > 1  # rows of different lengths: padding is exercised
    token_losses = []
    for completion in completions:
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        token_losses.append(F.cross_entropy(logits, torch.tensor(completion), reduction="none"))
    expected = torch.cat(token_losses).mean()
    torch.testing.assert_close(completion_loss(model, prompt, completions, tokenizer.pad_token_id), expected)


def test_a_batch_larger_than_the_corpus_is_refused():
    with pytest.raises(ValidationError, match="batch_size"):
        TinyPolicyConfig(batch_size=64, corpus_size=32)


def test_build_info_records_what_was_built(micro_policy, micro_policy_config):
    info = json.loads((micro_policy / BUILD_INFO).read_text())
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    assert info["seed"] == micro_policy_config.seed
    assert info["steps"] == micro_policy_config.steps
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["corpus"]["examples"] == micro_policy_config.corpus_size
    assert sum(info["corpus"]["mistakes"].values()) == round(
        micro_policy_config.corpus_size * micro_policy_config.mistake_share
    )
    assert info["loss"]["last_20_mean"] < info["loss"]["first"]  # it learned something
    assert policy_exists(micro_policy)


def test_two_builds_with_the_same_seed_give_identical_files(tmp_path, micro_policy_config):
    short = micro_policy_config.model_copy(update={"steps": 6, "corpus_size": 48})
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_tiny_policy(tmp_path / name, short.model_copy(update={"seed": seed}))

    def digest(name: str, file: str) -> str:
        return hashlib.sha256((tmp_path / name / file).read_bytes()).hexdigest()

    for file in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest("a", file) == digest("b", file), file
    assert digest("a", "model.safetensors") != digest("c", "model.safetensors")


def test_cli_build_policy_if_missing_keeps_a_finished_build(micro_policy):
    before = (micro_policy / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["build-policy", "--out", str(micro_policy), "--if-missing"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert (micro_policy / "model.safetensors").stat().st_mtime_ns == before
