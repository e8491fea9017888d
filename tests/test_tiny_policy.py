"""The tiny policy builder: a real from_pretrained checkpoint, deterministic in its seed."""

import json

from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM
from typer.testing import CliRunner

from sharpe_rl.cli import app
from sharpe_rl.policy.corpus import build_corpus
from sharpe_rl.policy.tiny import BUILD_INFO, build_tiny_policy, policy_exists


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


def test_build_info_records_what_was_built(micro_policy, micro_policy_config):
    info = json.loads((micro_policy / BUILD_INFO).read_text())
    model = AutoModelForCausalLM.from_pretrained(micro_policy)
    assert info["seed"] == micro_policy_config.seed
    assert info["steps_done"] == micro_policy_config.steps and not info["stopped_by_time_limit"]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["corpus"]["examples"] == micro_policy_config.corpus_size
    assert sum(info["corpus"]["mistakes"].values()) == round(
        micro_policy_config.corpus_size * micro_policy_config.mistake_share
    )
    assert info["loss"]["last_20_mean"] < info["loss"]["first"]  # it learned something
    assert policy_exists(micro_policy)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, micro_policy_config):
    short = micro_policy_config.model_copy(update={"steps": 4, "corpus_size": 40})
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_tiny_policy(tmp_path / name, short.model_copy(update={"seed": seed}))
    a, b, c = (load_file(tmp_path / name / "model.safetensors") for name in "abc")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert any(a[k].shape != c[k].shape or (a[k] != c[k]).any() for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_cli_build_policy_if_missing_keeps_a_finished_build(micro_policy):
    before = (micro_policy / "model.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["build-policy", "--out", str(micro_policy), "--if-missing"])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert (micro_policy / "model.safetensors").stat().st_mtime_ns == before
