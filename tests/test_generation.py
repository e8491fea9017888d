"""Generation: seeded, batch-invariant, log-probs PPO can trust, LoRA-aware, and constrained JSON."""

import importlib.util
import json
from datetime import timedelta

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralForCausalLM

from sharpe_rl.config import EvalConfig, PolicyConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.policy.constrained import SpecJsonAutomaton
from sharpe_rl.policy.corpus import build_corpus
from sharpe_rl.policy.generation import TransformersGenerator, make_generator, sampling_logprobs
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.spec import MAX_NAME_CHARS, extract_json_object, parse_spec


def clock(horizon_bars: int, hours: int):
    return Clock.of(EvalConfig(horizon=horizon_bars), timedelta(hours=hours))


PROMPTS = [
    render_prompt("v5_rules", ["open", "high", "low", "close", "volume"], timedelta(days=1), clock(1, 24), ["BTCUSDT"]),
    render_prompt("v4_example", ["close"], timedelta(hours=4), clock(3, 4), ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
    render_prompt("v5_rules", ["close", "volume"], timedelta(hours=1), clock(12, 1), ["ETHUSDT", "SOLUSDT", "XRPUSDT"]),
]


@pytest.fixture(scope="module")
def tokenizer(micro_policy):
    return AutoTokenizer.from_pretrained(micro_policy)


@pytest.fixture(scope="module")
def model(micro_policy):
    return AutoModelForCausalLM.from_pretrained(micro_policy)


def generator(model, tokenizer, **options) -> TransformersGenerator:
    return TransformersGenerator(model, tokenizer, **{"max_new_tokens": 40, **options})


def recomputed_logprobs(model, prompt_ids: list[int], completion_ids: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = model(ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(completion_ids)) + len(prompt_ids) - 1
    return logprobs[positions, torch.tensor(completion_ids)]


def test_same_seed_same_completions_other_seed_others(model, tokenizer):
    gen = generator(model, tokenizer)
    first, again, other = gen.generate(PROMPTS, seed=7), gen.generate(PROMPTS, seed=7), gen.generate(PROMPTS, seed=8)
    assert first == again
    assert [g.completion_token_ids for g in first] != [g.completion_token_ids for g in other]


def test_identical_prompts_in_one_call_get_different_samples(model, tokenizer):
    samples = generator(model, tokenizer).generate([PROMPTS[0]] * 4, seed=0)
    assert len({tuple(g.completion_token_ids) for g in samples}) > 1


def test_logprobs_equal_a_forward_pass(model, tokenizer):
    for g in generator(model, tokenizer).generate(PROMPTS, seed=1):
        assert g.prompt_token_ids == tokenizer(g.prompt)["input_ids"]
        assert len(g.logprobs) == len(g.completion_token_ids) > 0
        recomputed = recomputed_logprobs(model, g.prompt_token_ids, g.completion_token_ids)
        assert torch.allclose(torch.tensor(g.logprobs), recomputed, atol=1e-4)


def test_left_padded_batches_give_what_one_prompt_at_a_time_gives(model, tokenizer):
    assert len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) == len(PROMPTS)  # real padding happens
    batched = generator(model, tokenizer, batch_size=16).generate(PROMPTS, seed=3)
    one_by_one = generator(model, tokenizer, batch_size=1).generate(PROMPTS, seed=3)
    assert [g.completion_token_ids for g in batched] == [g.completion_token_ids for g in one_by_one]
    for a, b in zip(batched, one_by_one, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5)


def test_completion_text_and_eos(model, tokenizer):
    for g in generator(model, tokenizer, max_new_tokens=60).generate(PROMPTS, seed=2):
        ended = g.completion_token_ids[-1] == tokenizer.eos_token_id
        assert ended or len(g.completion_token_ids) == 60
        assert tokenizer.eos_token_id not in g.completion_token_ids[:-1]
        body = g.completion_token_ids[:-1] if ended else g.completion_token_ids
        assert g.completion == tokenizer.decode(body)


def test_a_peft_model_samples_with_its_adapter(model, tokenizer):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model.name_or_path), lora)
    base = generator(model, tokenizer).generate(PROMPTS, seed=4)
    fresh = generator(peft_model, tokenizer).generate(PROMPTS, seed=4)  # LoRA B = 0: the base model
    assert [g.completion_token_ids for g in fresh] == [g.completion_token_ids for g in base]
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    adapted = generator(peft_model, tokenizer).generate(PROMPTS, seed=4)
    assert [g.logprobs for g in adapted] != [g.logprobs for g in base]
    for g in adapted:
        recomputed = recomputed_logprobs(peft_model, g.prompt_token_ids, g.completion_token_ids)
        assert torch.allclose(torch.tensor(g.logprobs), recomputed, atol=1e-4)


def test_sampling_logprobs_temper_and_truncate():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    assert torch.allclose(sampling_logprobs(logits, 1.0, 1.0), logits.log_softmax(-1))
    assert torch.allclose(sampling_logprobs(logits, 0.5, 1.0), (logits / 0.5).log_softmax(-1))
    probs = logits.softmax(-1)[0]  # about 0.64, 0.24, 0.09, 0.03
    kept = sampling_logprobs(logits, 1.0, 0.7).exp()[0]
    assert torch.allclose(kept, torch.tensor([probs[0], probs[1], 0, 0]) / (probs[0] + probs[1]))


def test_constrained_decoding_makes_even_a_random_model_write_a_valid_spec(micro_policy, tokenizer):
    config = AutoModelForCausalLM.from_pretrained(micro_policy).config
    torch.manual_seed(0)
    untrained = MistralForCausalLM(config)
    free = generator(untrained, tokenizer, max_new_tokens=48).generate(PROMPTS * 4, seed=0)
    assert sum(_is_spec_object(g.completion) for g in free) == 0  # the processor is what makes the difference
    # A long budget: left to itself, a random model would write names far past ExperimentSpec's limit.
    constrained = generator(untrained, tokenizer, max_new_tokens=400, constrained_json=True).generate(PROMPTS * 4, 0)
    for g in constrained:
        assert _is_spec_object(g.completion), g.completion
        parse_spec(g.completion)  # no json_parse and no schema error either
        assert g.completion_token_ids[-1] == tokenizer.eos_token_id and len(g.completion_token_ids) <= 400
    assert max(len(json.loads(g.completion)["name"]) for g in constrained) > MAX_NAME_CHARS // 2  # the cap was tested


def _is_spec_object(completion: str) -> bool:
    """The whole completion is one JSON object with exactly the spec's keys, in order, as non-blank strings."""
    try:
        obj = json.loads(completion)
    except json.JSONDecodeError:
        return False
    return list(obj) == ["name", "features", "model"] and all(isinstance(v, str) and v.strip() for v in obj.values())


def test_the_automaton_accepts_corpus_completions_and_rejects_other_text(tokenizer):
    automaton = SpecJsonAutomaton(tokenizer, len(tokenizer))
    for example in build_corpus(20, seed=3, mistake_share=0.0):
        state = automaton.start
        for token in tokenizer(example.completion)["input_ids"] + [tokenizer.eos_token_id]:
            state = int(automaton.next_state[state, token])
            assert state >= 0
        assert state == automaton.end
    state = automaton.start
    for token in tokenizer('{"nam')["input_ids"]:
        state = int(automaton.next_state[state, token])
    assert state >= 0 and int(automaton.next_state[state, tokenizer.convert_tokens_to_ids("x")]) == -1
    state = automaton.start
    for token in tokenizer('{"name": "a')["input_ids"]:
        state = int(automaton.next_state[state, token])
    x, quote = tokenizer.convert_tokens_to_ids("x"), tokenizer.convert_tokens_to_ids('"')
    assert automaton.field_chars[state, x].tolist() == [1, 0, 0]  # one more character of the name
    assert automaton.field_chars[state, quote].tolist() == [0, 0, 0]  # closing adds nothing: always possible


def test_extract_json_object_finds_a_constrained_completion(model, tokenizer):
    for g in generator(model, tokenizer, max_new_tokens=64, constrained_json=True).generate(PROMPTS, seed=5):
        assert set(extract_json_object(g.completion)) == {"name", "features", "model"}


def test_make_generator_loads_the_configured_policy(micro_policy):
    gen = make_generator(PolicyConfig(model=str(micro_policy), device="cpu", max_new_tokens=16))
    assert isinstance(gen, TransformersGenerator) and gen.max_new_tokens == 16
    assert len(gen.generate(PROMPTS[:1], seed=0)) == 1


def test_make_generator_says_how_to_build_a_missing_policy(tmp_path):
    with pytest.raises(FileNotFoundError, match="sharpe-rl build-policy"):
        make_generator(PolicyConfig(model=str(tmp_path / "runs" / "policy" / "tiny")))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_points_to_the_gpu_docs():
    with pytest.raises(RuntimeError, match=r"docs/gpu\.md"):
        make_generator(PolicyConfig(backend="vllm"))
