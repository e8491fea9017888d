"""PPO on LoRA adapters: the math on hand examples, then the behaviour on a tiny random Mistral policy."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import pytest
import torch
from ppo_fixtures import adapter_state, experience, save_tiny_base, sequence_logprob, tiny_policy

from sharpe_rl.config import PPOConfig
from sharpe_rl.policy.ppo import (
    AdaptiveKLController,
    PPOTrainer,
    centred_ranks,
    clipped_surrogate_loss,
    collate,
    gae,
    group_advantages,
    group_ids,
    ppo_losses,
    rollout_scores,
    sequence_kl,
    token_rewards,
    whiten,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


# -- the math, by hand -------------------------------------------------------------------------


def test_gae_on_a_three_token_sequence_and_a_padded_one():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 7.0]])
    values = torch.tensor([[0.5, 0.2, -0.1], [1.0, 1.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, gae_lambda=0.5)
    # row 0: d2 = 1 - (-0.1) = 1.1; d1 = -0.1 - 0.2 = -0.3, A1 = -0.3 + 0.5 * 1.1; d0 = 0.2 - 0.5, A0 = -0.3 + 0.5 * A1
    # row 1: the padded third token counts for nothing: d1 = 2 - 1 = 1; d0 = 1 - 1 = 0, A0 = 0.5 * 1
    expected = torch.tensor([[-0.175, 0.25, 1.1], [0.5, 1.0, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.tensor([[0.325, 0.45, 1.0], [1.5, 2.0, 0.0]]))


def test_gae_discounts_with_gamma():
    advantages, _ = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.9, 1.0)
    torch.testing.assert_close(advantages, torch.tensor([[0.9, 1.0]]))


def test_the_kl_stat_is_never_negative_and_estimates_the_sequence_kl():
    # 20,000 three-token completions sampled from p, scored against the reference q; the last token
    # of every other completion is padding, so those are two-token sequences.
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    tokens = torch.multinomial(p, 60_000, replacement=True, generator=torch.Generator().manual_seed(0)).view(-1, 3)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[::2, 2] = False
    logprobs, ref_logprobs = p.log()[tokens], q.log()[tokens]
    kl = sequence_kl(logprobs, ref_logprobs, mask)
    token_kl = (p * (p / q).log()).sum()
    assert (kl >= 0).all()
    assert kl[::2].mean().item() == pytest.approx(2 * token_kl.item(), rel=0.03)
    assert kl[1::2].mean().item() == pytest.approx(3 * token_kl.item(), rel=0.03)
    k1 = torch.where(mask, logprobs - ref_logprobs, 0.0).sum(1)
    assert (k1 < 0).any()  # what the reward penalty uses can be negative on a completion; the stat cannot
    assert sequence_kl(logprobs, logprobs, mask).abs().max().item() == 0.0


def test_token_rewards_put_the_reward_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    rewards = token_rewards(kl, torch.tensor([1.0, -1.0]), mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, 0.85], [-0.2, -1.25, 0.0]]))


def test_whitening_ignores_padding():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    std = math.sqrt(2 / 3)
    torch.testing.assert_close(whiten(values, mask, shift_mean=True), torch.tensor([-1 / std, 0.0, 1 / std, 0.0]))
    torch.testing.assert_close(whiten(values, mask, shift_mean=False), torch.tensor([1 / std, 2 / std, 3 / std, 0.0]))


def test_clip_fraction_and_clipped_surrogate():
    ratio = torch.tensor([[0.5, 1.0, 1.5]])
    completion_ids = torch.zeros(1, 3, dtype=torch.long)
    logits = torch.zeros(1, 3, 2)  # every token has log-prob log(1/2)
    old_logprobs = math.log(0.5) - ratio.log()
    mask = torch.ones(1, 3, dtype=torch.bool)
    losses = ppo_losses(
        logits, torch.zeros(1, 3), completion_ids, mask, old_logprobs, torch.zeros(1, 3), torch.ones(1, 3), None,
        PPOConfig(clip_coef=0.2),
    )  # fmt: skip
    assert losses["clip_fraction"].item() == pytest.approx(2 / 3)
    # A > 0: the objective takes min(r, clip(r)): 0.5, 1.0 and 1.2 (the gain beyond 1.2 is cut off)
    assert losses["policy_loss"].item() == pytest.approx(-(0.5 + 1.0 + 1.2) / 3)
    assert losses["entropy"].item() == pytest.approx(math.log(2))


def test_clipped_surrogate_equals_unclipped_at_ratio_one():
    advantages = torch.tensor([[1.5, -2.0, 0.3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    ratio = torch.ones(1, 3, requires_grad=True)
    loss = clipped_surrogate_loss(ratio, advantages, mask, clip_coef=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-advantages.mean().item())
    torch.testing.assert_close(ratio.grad, -advantages / 3)  # the gradient of the unclipped objective


def test_clip_higher_clips_the_ratio_asymmetrically():
    ratio = torch.tensor([[0.7, 0.75, 1.25, 1.3]], requires_grad=True)
    mask = torch.ones(1, 4, dtype=torch.bool)
    for advantages, clip_coef_high, kept in [
        # A > 0, DAPO's range [0.8, 1.28]: 1.25 still earns its gain, 1.3 is cut at 1.28; a fall is never clipped
        (torch.ones(1, 4), 0.28, [0.7, 0.75, 1.25, 1.28]),
        # A > 0, symmetric [0.8, 1.2]: both rises are cut at 1.2
        (torch.ones(1, 4), None, [0.7, 0.75, 1.2, 1.2]),
        # A < 0: the lower bound is 0.8 either way (a fall below it earns nothing more); a rise is never clipped
        (-torch.ones(1, 4), 0.28, [0.8, 0.8, 1.25, 1.3]),
    ]:
        ratio.grad = None
        loss = clipped_surrogate_loss(ratio, advantages, mask, clip_coef=0.2, clip_coef_high=clip_coef_high)
        loss.backward()
        sign = advantages[0, 0].item()
        assert loss.item() == pytest.approx(-sign * sum(kept) / 4)
        # a clipped token gets no gradient: the objective no longer moves its ratio
        unclipped = [r == pytest.approx(k) for r, k in zip(ratio[0].tolist(), kept, strict=True)]
        assert (ratio.grad[0] != 0).tolist() == unclipped, (advantages, clip_coef_high)


def test_clip_fraction_counts_the_asymmetric_range():
    ratio = torch.tensor([[0.75, 1.25, 1.3]])
    logits = torch.zeros(1, 3, 2)
    old_logprobs = math.log(0.5) - ratio.log()
    mask = torch.ones(1, 3, dtype=torch.bool)
    args = (logits, torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.long), mask, old_logprobs, torch.zeros(1, 3))
    higher = ppo_losses(*args, torch.ones(1, 3), None, PPOConfig(clip_coef=0.2, clip_coef_high=0.28))
    symmetric = ppo_losses(*args, torch.ones(1, 3), None, PPOConfig(clip_coef=0.2))
    assert higher["clip_fraction"].item() == pytest.approx(2 / 3)  # 0.75 < 0.8 and 1.3 > 1.28
    assert symmetric["clip_fraction"].item() == pytest.approx(1.0)


def test_adaptive_kl_controller_moves_towards_the_target():
    above = AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    above.update(kl=12.0, n_samples=10)  # relative error clipped to +0.2
    assert above.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    below = AdaptiveKLController(value=0.1, target=6.0, horizon=100)
    below.update(kl=5.4, n_samples=10)  # relative error -0.1
    assert below.value == pytest.approx(0.1 * (1 - 0.1 * 10 / 100))
    fixed = AdaptiveKLController(value=0.1, target=None, horizon=100)
    fixed.update(kl=100.0, n_samples=10)
    assert fixed.value == 0.1


def test_group_advantages_are_leave_one_out_and_sum_to_zero_per_prompt():
    rewards = torch.tensor([1.0, 0.0, 2.0, 5.0, 5.0, -1.0, 3.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    advantages = group_advantages(rewards, groups)
    torch.testing.assert_close(advantages, torch.tensor([0.0, -1.5, 1.5, 0.0, 0.0, -4.0, 4.0]))
    for group in range(3):
        assert advantages[groups == group].sum().item() == pytest.approx(0.0, abs=1e-6)


def test_centred_ranks_keep_the_rewards_order_with_equal_steps_and_shared_ties():
    # two format failures, a runtime failure and three valid experiments close together
    rewards = torch.tensor([-1.5, -0.70, -0.72, -1.5, -1.25, -0.71])
    torch.testing.assert_close(centred_ranks(rewards), torch.tensor([-0.4, 0.5, 0.1, -0.4, -0.1, 0.3]))
    assert centred_ranks(torch.tensor([0.3, 0.3, 0.3])).tolist() == [0.0, 0.0, 0.0]
    assert centred_ranks(torch.tensor([0.3])).tolist() == [0.0]


def test_groups_are_formed_by_prompt_tokens():
    batch = [experience([1, 2], [3], 0.0), experience([1, 3], [3], 0.0), experience([1, 2], [4], 0.0)]
    assert group_ids(batch).tolist() == [0, 1, 0]


def test_group_mode_refuses_a_prompt_sampled_once(base):
    trainer = PPOTrainer(tiny_policy(base), PPOConfig(advantage="group"))
    with pytest.raises(ValueError, match="at least 2 samples"):
        trainer.update([experience([1, 2], [3], 1.0), experience([1, 3], [3], 0.0)])


def test_logprobs_must_cover_every_completion_token(base):
    trainer = PPOTrainer(tiny_policy(base), PPOConfig())
    with pytest.raises(ValueError, match="one log-prob per completion token"):
        trainer.update([experience([1, 2], [3, 4], 1.0, logprobs=[0.0])])


# -- behaviour on a tiny policy ----------------------------------------------------------------

REWARDED = experience([5, 6, 7, 8], [10, 11, 12, 13, 14], 1.0, index=0)
PUNISHED = experience([5, 6, 7, 8], [20, 21, 22], -1.0, index=1)


def test_at_init_the_policy_is_the_reference(base):
    policy = tiny_policy(base)
    batch = collate([REWARDED, PUNISHED], policy.pad_token_id, policy.device)
    old_logprobs, ref_logprobs, *_ = rollout_scores(policy, batch, chunk_size=2)
    assert torch.equal(old_logprobs, ref_logprobs)
    stats = PPOTrainer(policy, PPOConfig()).update([REWARDED, PUNISHED])
    assert stats.kl == 0.0


@pytest.mark.parametrize("advantage", ["gae", "group"])
def test_updates_raise_the_rewarded_completion_and_lower_the_punished_one(base, advantage):
    policy = tiny_policy(base)
    trainer = PPOTrainer(policy, PPOConfig(advantage=advantage, learning_rate=1e-2, minibatch_size=2))
    before = sequence_logprob(policy, REWARDED), sequence_logprob(policy, PUNISHED)
    for _ in range(4):
        stats = trainer.update([REWARDED, PUNISHED])
        assert all(math.isfinite(v) for v in asdict(stats).values() if v is not None), stats
    after = sequence_logprob(policy, REWARDED), sequence_logprob(policy, PUNISHED)
    assert after[0] > before[0] + 0.5
    assert after[1] < before[1] - 0.5
    assert stats.kl > 0  # moved away from the reference ...
    assert stats.kl_coef < PPOConfig().init_kl_coef  # ... but far below target_kl, so the penalty relaxes
    assert (stats.value_loss is None) == (advantage == "group")


@pytest.mark.parametrize("advantage", ["gae", "group"])
def test_with_reward_ranks_an_update_depends_on_the_rewards_order_not_their_scale(base, advantage):
    # The evidence reward puts valid experiments close together far from a failure: on ranks, the update from
    # rewards squeezed that way is the update from the same order spread out; on values it is not.
    batch = [
        experience([5, 6, 7, 8], [10, 11, 12], -0.70, index=0),
        experience([5, 6, 7, 8], [20, 21], -0.72, index=1),
        experience([5, 6, 7, 8], [30, 31, 32, 33], -1.5, index=2),
        experience([5, 6, 7, 8], [40, 41], -0.71, index=3),
    ]
    spread = [e.model_copy(update={"reward": r}) for e, r in zip(batch, [1.0, -0.5, -1.5, 0.2], strict=True)]

    def updated(experiences, ranks):
        policy = tiny_policy(base)
        PPOTrainer(policy, PPOConfig(advantage=advantage, reward_ranks=ranks, learning_rate=1e-2)).update(experiences)
        return adapter_state(policy)

    def same(a, b):
        return all(torch.allclose(a[name], b[name]) for name in a)

    assert same(updated(batch, ranks=True), updated(spread, ranks=True))
    assert not same(updated(batch, ranks=False), updated(spread, ranks=False))


def test_the_update_learns_from_the_rewards_it_is_given_in_place_of_the_experiences_own(base):
    # PPOConfig.credit: the pipeline hands over what to learn from (a family's evidence); the experiences keep
    # their own reward, which is what is logged.
    batch = [REWARDED, PUNISHED]
    credited = [-0.2, 0.4]

    def updated(experiences, rewards=None):
        policy = tiny_policy(base)
        PPOTrainer(policy, PPOConfig(learning_rate=1e-2)).update(experiences, rewards)
        return adapter_state(policy)

    given = updated(batch, credited)
    as_if_earned = updated([e.model_copy(update={"reward": r}) for e, r in zip(batch, credited, strict=True)])
    own = updated(batch)
    assert all(torch.allclose(given[name], as_if_earned[name]) for name in given)
    assert not all(torch.allclose(given[name], own[name]) for name in given)
    with pytest.raises(ValueError, match="1 rewards to learn from for 2 experiences"):
        PPOTrainer(tiny_policy(base), PPOConfig()).update(batch, [0.1])
    with pytest.raises(ValueError, match="not finite"):
        PPOTrainer(tiny_policy(base), PPOConfig()).update(batch, [0.1, float("nan")])


def test_an_update_stops_once_the_policy_has_moved_max_approx_kl_from_the_sampler(base):
    moving = PPOConfig(learning_rate=5e-2, minibatch_size=1, epochs=4)
    free = PPOTrainer(tiny_policy(base), moving.model_copy(update={"max_approx_kl": None})).update([REWARDED, PUNISHED])
    assert free.steps == 8  # 4 epochs x 2 minibatches
    capped = PPOTrainer(tiny_policy(base), moving.model_copy(update={"max_approx_kl": 1e-4}))
    stats = capped.update([REWARDED, PUNISHED])
    # step 1 starts at the sampler (KL 0); step 2 measures the move, passes the cap, and is the last
    assert stats.steps == 2
    assert stats.approx_kl > 0


def test_the_rollout_entropy_is_the_sampling_policys_before_the_update(base):
    policy = tiny_policy(base)
    batch = collate([REWARDED, PUNISHED], policy.pad_token_id, policy.device)
    with torch.no_grad():
        logits, _ = policy.completion_outputs(batch.input_ids, batch.attention_mask, batch.logit_positions)
    probs = logits.softmax(-1)
    expected = (-(probs * probs.log()).sum(-1))[batch.completion_mask].mean().item()
    stats = PPOTrainer(policy, PPOConfig(learning_rate=1e-2)).update([REWARDED, PUNISHED])
    assert stats.rollout_entropy == pytest.approx(expected, rel=1e-5)
    assert 0 < stats.rollout_entropy <= math.log(logits.shape[-1])


def test_updates_never_touch_the_reference(base):
    policy = tiny_policy(base)
    base_weights = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    with policy.reference():
        reference_before = sequence_logprob(policy, REWARDED)
    trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2))
    for _ in range(3):
        trainer.update([REWARDED, PUNISHED])
    with policy.reference():
        assert sequence_logprob(policy, REWARDED) == reference_before
    assert sequence_logprob(policy, REWARDED) != reference_before
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_weights[name]), name


def test_the_pad_token_id_never_changes_the_update(base):
    batch = [REWARDED, PUNISHED, experience([9, 9], [30], 0.5, index=2)]
    states = []
    for pad_token_id in (0, 63):
        policy = tiny_policy(base)
        policy.pad_token_id = pad_token_id
        trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2, minibatch_size=3))
        trainer.update(batch)
        states.append(adapter_state(policy))
    for name, tensor in states[0].items():
        assert torch.equal(states[1][name], tensor), name


def test_the_padding_amount_never_changes_a_sequence_outputs(base):
    policy = tiny_policy(base)
    trainer = PPOTrainer(policy, PPOConfig(learning_rate=1e-2))
    trainer.update([REWARDED, PUNISHED])  # non-zero adapters and value head
    long_one = experience(list(range(1, 40)), list(range(1, 30)), 0.0)
    alone = collate([PUNISHED], 0, policy.device)
    padded = collate([PUNISHED, long_one], 0, policy.device)
    with torch.no_grad():
        logits_alone, values_alone = policy.completion_outputs(
            alone.input_ids, alone.attention_mask, alone.logit_positions
        )
        logits_padded, values_padded = policy.completion_outputs(
            padded.input_ids, padded.attention_mask, padded.logit_positions
        )
    n = len(PUNISHED.completion_token_ids)
    torch.testing.assert_close(logits_padded[0, :n], logits_alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(values_padded[0, :n], values_alone[0], rtol=0, atol=1e-5)


def test_generation_logprobs_match_the_recomputed_ones(base, caplog):
    """Sampled at temperature 1 with no top-k/top-p, batched with left padding, the sampler agrees with PPO."""
    policy = tiny_policy(base)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    torch.manual_seed(1)
    out = policy.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        do_sample=True,
        temperature=1.0,
        top_k=0,  # transformers falls back to top_k=50 unless told otherwise
        top_p=1.0,
        max_new_tokens=12,
        output_scores=True,
        return_dict_in_generate=True,
    )
    completions = out.sequences[:, width:]
    scores = torch.stack(out.scores, dim=1).log_softmax(-1)
    logprobs = scores.gather(-1, completions[..., None]).squeeze(-1)
    batch = [
        experience(p, completions[i].tolist(), float(i), index=i, logprobs=logprobs[i].tolist())
        for i, p in enumerate(prompts)
    ]
    with caplog.at_level(logging.WARNING, logger="sharpe_rl.policy.ppo"):
        stats = PPOTrainer(policy, PPOConfig()).update(batch)
    assert stats.logprob_gap < 1e-5
    assert not caplog.records

    tampered = [e.model_copy(update={"logprobs": [lp - 0.1 for lp in e.logprobs]}) for e in batch]
    with caplog.at_level(logging.WARNING, logger="sharpe_rl.policy.ppo"):
        stats = PPOTrainer(tiny_policy(base), PPOConfig()).update(tampered)
    assert stats.logprob_gap == pytest.approx(0.1, abs=1e-4)
    assert "off-policy" in caplog.text
