"""The policy learns: a few PPO cycles on the tiny policy make a rewarded model family far more common.

A synthetic reward stands in for the sandbox: +1 when the experiment's model family (as the
post-mortem reads it, `classify(spec).model_family`) is the chosen one, 0 otherwise, 0 when the
completion does not parse. Each cycle is the pipeline's: sample a batch from the policy being
trained (TransformersGenerator on `policy.model`), score it, one `PPOTrainer.update`. The share of
the family is measured on a fixed evaluation batch before and after; the KL to the reference
(the adapters switched off) must stay bounded, and `reset` must give back the base policy's
completions bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from sharpe_rl.classify import classify
from sharpe_rl.config import EvalConfig, PolicyConfig, PPOConfig
from sharpe_rl.data.clock import Clock
from sharpe_rl.experience import Experience
from sharpe_rl.policy.generation import Generation, TransformersGenerator
from sharpe_rl.policy.model import load_policy
from sharpe_rl.policy.ppo import PPOTrainer, collate, rollout_scores, sequence_kl
from sharpe_rl.policy.prompts import render_prompt
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS
from sharpe_rl.spec import SpecError, parse_spec

pytestmark = pytest.mark.slow

TARGET = "xgboost"
"""One family in nine in the corpus; about one sample in ten of the learning policy (see BASE_RATE_MAX)."""

#: Four datasets (several prompts, as `advantage: group` needs), each sampled SAMPLES_PER_PROMPT times per cycle.
PROMPTS = [
    render_prompt("v5_rules", OHLCV_COLUMNS, interval, Clock.of(EvalConfig(), interval), symbols)
    for interval, symbols in (
        (timedelta(days=1), ["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
        (timedelta(hours=4), ["BTCUSDT", "ETHUSDT"]),
        (timedelta(hours=1), ["SOLUSDT", "XRPUSDT", "ADAUSDT"]),
        (timedelta(days=1), ["BNBUSDT", "DOGEUSDT"]),
    )
]
SAMPLES_PER_PROMPT = 16
EVAL_PER_PROMPT = 32
EVAL_SEED = 10_000  # never a training cycle's seed
CYCLES = 24
MAX_NEW_TOKENS = 160  # the tiny policy's completions end (EOS) within 90 tokens

#: The pipeline's PPO defaults, except: a learning rate that moves a 1.3M-parameter model's adapters
#: within two dozen cycles of 64 samples, more passes over each batch, and full-return advantages
#: (lambda 1), so that the terminal reward reaches the name token at the start of the completion,
#: where the family is chosen. At twice this learning rate the KL jumps to 30-350 nats in some
#: cycles and the share can collapse again.
LEARNING = PPOConfig(learning_rate=5e-4, epochs=4, minibatch_size=8, gae_lambda=1.0)

BASE_RATE_MAX = 0.2
#: At least twice the base rate. Measured on the whole-panel corpus (longer feature code between the name, where the
#: family is chosen, and the model source): 0.09 -> 0.23 with gae, 0.21 with group (24 cycles; 0.23 and 0.24 after 32,
#: and 0.16 / 0.25 at a learning rate of 7e-4); on the earlier per-symbol corpus 0.10 -> 0.30 and 0.32. Without
#: PPOConfig.max_approx_kl, gae's updates jumped to 310 nats at cycle 22 and the share fell to 0.
FINAL_SHARE_MIN = 0.18
KL_MAX = 25.0  # nats per completion, any cycle; the adaptive controller aims at PPOConfig.target_kl = 6


def family(completion: str) -> str | None:
    try:
        return classify(parse_spec(completion)).model_family
    except SpecError:
        return None


def share(generations: list[Generation]) -> float:
    return sum(family(g.completion) == TARGET for g in generations) / len(generations)


def scored(generations: list[Generation], cycle: int) -> list[Experience]:
    return [
        Experience.from_generation(
            g,
            run="learning",
            cycle=cycle,
            index=index,
            prompt_version="v5_rules",
            reward=float(family(g.completion) == TARGET),
        )
        for index, g in enumerate(generations)
    ]


def kl_to_reference(trainer: PPOTrainer, generations: list[Generation]) -> float:
    """KL of the policy to its reference on these samples, as `PPOStats.kl` measures it."""
    batch = collate(scored(generations, cycle=0), trainer.policy.pad_token_id, trainer.policy.device)
    logprobs, ref_logprobs, *_ = rollout_scores(trainer.policy, batch, chunk_size=16)
    return sequence_kl(logprobs, ref_logprobs, batch.completion_mask).mean().item()


@dataclass
class Learning:
    """What a run of CYCLES cycles did, and the trainer it leaves."""

    base: list[Generation]
    final: list[Generation]
    kls: list[float]  # per cycle, measured on the cycle's batch before its update, then on the final batch
    trainer: PPOTrainer
    generator: TransformersGenerator
    seconds: float


@pytest.fixture(scope="module")
def learning(pipeline_policy: Path) -> Learning:
    """The pipeline's advantage (gae). `advantage: group` learns as well (0.21 above) and its update is tested in
    tests/test_ppo.py; its 24 cycles here took 11 minutes of a suite run (beside a night), so they are measured with
    `bench/learning_stability.py --reward family --set advantage=group` (with LEARNING's settings) instead."""
    started = time.perf_counter()
    torch.manual_seed(0)
    policy = load_policy(PolicyConfig(model=str(pipeline_policy), device="cpu"), seed=0)
    tokenizer = AutoTokenizer.from_pretrained(pipeline_policy)
    generator = TransformersGenerator(policy.model, tokenizer, max_new_tokens=MAX_NEW_TOKENS, batch_size=32)
    trainer = PPOTrainer(policy, LEARNING, seed=0)
    evaluation = [prompt for prompt in PROMPTS for _ in range(EVAL_PER_PROMPT)]
    base = generator.generate(evaluation, seed=EVAL_SEED)
    kls = []
    for cycle in range(CYCLES):
        batch = generator.generate([prompt for prompt in PROMPTS for _ in range(SAMPLES_PER_PROMPT)], seed=cycle)
        kls.append(trainer.update(scored(batch, cycle)).kl)
    final = generator.generate(evaluation, seed=EVAL_SEED)
    kls.append(kl_to_reference(trainer, final))
    return Learning(base, final, kls, trainer, generator, time.perf_counter() - started)


def test_ppo_makes_the_rewarded_family_far_more_common_with_a_bounded_kl(learning: Learning):
    base_share, final_share = share(learning.base), share(learning.final)
    print(
        f"{learning.trainer.cfg.advantage}: {TARGET} share {base_share:.2f} -> {final_share:.2f}, "
        f"KL per cycle {[round(kl, 2) for kl in learning.kls]}, {learning.seconds:.0f} s"
    )
    assert base_share <= BASE_RATE_MAX
    assert final_share >= FINAL_SHARE_MIN
    assert max(learning.kls) <= KL_MAX


def test_after_reset_the_same_seed_gives_the_base_policys_completions_exactly(learning: Learning):
    evaluation = [g.prompt for g in learning.base]
    assert learning.final != learning.base
    learning.trainer.reset()
    assert learning.generator.generate(evaluation, seed=EVAL_SEED) == learning.base  # tokens, text and log-probs
