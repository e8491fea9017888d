"""PPO on the LoRA adapters, CleanRL-style: one scored batch in, one update, its stats out.

The batch arrives already generated, executed and scored (those are separate pipeline steps),
so this module never samples. `PPOTrainer.update` reads top to bottom, one function per phase:

1. `collate`            experiences -> right-padded prompt+completion rows, completion masks
2. `rollout_scores`     no-grad pass: old log-probs, reference log-probs (adapters off), old values, entropies
3. `token_rewards`      -kl_coef * (old - ref) on every token, the terminal reward on the last one;
                        `sequence_kl` the KL to the reference the stats and the controller use
4. `advantages_and_returns`  `gae` (with the critic) or `group_advantages` (without), then `whiten`;
                        with `reward_ranks`, on the rewards' `centred_ranks`
5. `ppo_losses`         clipped surrogate, clipped value loss, entropy bonus (per minibatch, epochs;
                        the update stops early once a step measures approx_kl above max_approx_kl)
6. `AdaptiveKLController.update`  move kl_coef towards target_kl

Written here rather than with TRL: its GRPO/RLOO trainers run their own generation, and its last
PPO trainer wants separate reward and value models, while this pipeline hands over a batch that
is already sampled, executed and scored.

Decisions the algorithm leaves open:

- **Old log-probs are recomputed**, not taken from generation. The ratio must be exactly 1 before
  the first step, and the sampler's numbers come from another code path (KV cache, left padding,
  vLLM kernels, bf16) that differs slightly even when the distribution is the same. The
  generation log-probs are compared with the recomputed ones (`PPOStats.logprob_gap`) and a
  warning names the usual causes when they diverge: then the samples were not drawn from the
  policy being trained (temperature, top-p/top-k, constrained decoding) and PPO is off-policy.
- **KL estimators** (Schulman, "Approximating KL divergence"). The reward penalty is k1,
  `logp_old - logp_ref` per token: its sum over a completion is an unbiased estimate of the
  sequence KL, and it is the term whose policy gradient is the gradient of the KL, which is what
  the penalised return needs. It is negative on every token the policy finds less likely than the
  reference, so its batch mean can be below zero. The `kl` stat (logged as `ppo_kl`, printed
  per cycle) and the adaptive controller use k3 instead (`sequence_kl`): `(r - 1) - log r` per
  token with `r = p_ref / p_old`, summed over the completion and averaged over the batch. It has
  the same expectation, is never negative, and varies less, so the number a user reads and the
  one the controller steers by are the same, and mean what they say.
- **Group baseline** (`advantage: group`, RLOO): a sample's advantage is its KL-penalised reward
  minus the mean of the *other* samples of the same prompt, so the baseline does not depend on
  the sample itself and each prompt's advantages sum to zero. Whitening then only rescales (by
  the batch std), never re-centres. No value head is trained in this mode.
- **Reward ranks** (`reward_ranks`, off by default; fitness shaping, as in evolution strategies):
  the update learns from each reward's centred rank in the batch. The order is the reward's, so
  it pays what the reward pays, but every gap becomes one step. The evidence reward squashes
  around the expected best of the run's trials, and a policy's valid experiments sit far below it,
  in the flat part: on a 4h night its valid rewards moved 0.042 per unit of net Sharpe, while a
  failure sat 0.78 below their mean (docs/learning.md, "Why the update hardly moves"). On values,
  any batch with a failure spends its step on that failure and barely ranks the rest.
- **Credit** (`credit`, "own" by default): with "family" the pipeline hands the update, for each experiment
  that ran, its model family's mean reward in the run so far (`sharpe_rl.credit.family_credit`) in place of its
  own, because one experiment's result barely carries over to the holdout while the family does. The
  update takes any such `rewards` beside the experiences; the experiences' rewards stay what is logged.
- Losses are means over all completion tokens of the minibatch (long completions weigh more).
- **Clip-higher** (`clip_coef_high`, DAPO, Yu et al. 2025): the ratio is clipped to
  [1 - clip_coef, 1 + clip_coef_high]. The upper clip binds on unlikely tokens (at 0.2, a token
  of probability 0.01 may rise only to 0.012 per update) and hardly on likely ones (0.9 may reach
  1), so a symmetric range sharpens what the policy already prefers and its entropy collapses;
  a wider upper range lets rare tokens that earned a positive advantage grow. DAPO uses 0.2
  below and 0.28 above.
- **Entropy** is reported twice: `rollout_entropy` is the sampling policy's, on the batch's
  completions before the update (the per-cycle curve to watch for collapse); `entropy` is the
  mean over the update's minibatch steps, the quantity the entropy bonus acts on.
- The value head reads the adapted model's last hidden state, so the value loss trains the
  adapters too (a shared trunk, weighed by vf_coef), as in CleanRL's shared-network agents.
- Dropout stays off (the model is in eval mode throughout), as in TRL: the rollout log-probs
  were computed without it, and dropout in the update would make the first ratio differ from 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.stats import rankdata
from torch import nn

from sharpe_rl.config import PPOConfig
from sharpe_rl.experience import Experience
from sharpe_rl.policy.model import Policy

log = logging.getLogger(__name__)

_ADAM_EPS = 1e-5  # as in CleanRL's PPO


@dataclass(frozen=True)
class PPOStats:
    """What one update did, averaged over its minibatch steps (KL terms measured before it)."""

    policy_loss: float
    value_loss: float | None  # None with advantage=group (no critic)
    entropy: float  # mean per completion token during the update's steps, nats
    rollout_entropy: float  # of the policy that sampled the batch, mean per completion token, nats
    kl: float  # to the reference, summed over a completion, mean over the batch (k3, never negative)
    approx_kl: float  # new vs old policy per token, k3 estimator
    clip_fraction: float  # share of tokens whose ratio left [1 - clip_coef, 1 + (clip_coef_high or clip_coef)]
    grad_norm: float  # before clipping
    kl_coef: float  # the coefficient used in this update's rewards
    explained_variance: float | None  # of the returns by the old values; None with advantage=group
    logprob_gap: float  # mean |generation log-prob - recomputed log-prob| per token
    steps: int  # gradient steps taken: epochs x minibatches, fewer when a step's approx_kl passed max_approx_kl


@dataclass(frozen=True)
class TokenBatch:
    """Experiences as tensors: prompt+completion rows right-padded, completions left-aligned."""

    input_ids: torch.Tensor  # [B, L] prompt + completion, then pad_token_id
    attention_mask: torch.Tensor  # [B, L]
    logit_positions: torch.Tensor  # [B, C] position whose hidden state predicts completion token t
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] True on real completion tokens
    generation_logprobs: torch.Tensor  # [B, C] what the sampler reported
    rewards: torch.Tensor  # [B] terminal reward of each completion
    lengths: torch.Tensor  # [B] prompt + completion tokens
    completion_lengths: torch.Tensor  # [B]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: torch.Tensor) -> TokenBatch:
        """These rows, with padding trimmed to their own longest sequence."""
        length, completion_length = int(self.lengths[rows].max()), int(self.completion_lengths[rows].max())
        return TokenBatch(
            input_ids=self.input_ids[rows, :length],
            attention_mask=self.attention_mask[rows, :length],
            logit_positions=self.logit_positions[rows, :completion_length],
            completion_ids=self.completion_ids[rows, :completion_length],
            completion_mask=self.completion_mask[rows, :completion_length],
            generation_logprobs=self.generation_logprobs[rows, :completion_length],
            rewards=self.rewards[rows],
            lengths=self.lengths[rows],
            completion_lengths=self.completion_lengths[rows],
        )


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): nudge kl_coef so the per-sequence KL to the reference tracks `target`.

    The step is proportional to the relative error (clipped to ±20%) and to the share of the
    horizon the batch covers. With `target=None` the coefficient stays fixed.
    """

    value: float
    target: float | None
    horizon: int

    def update(self, kl: float, n_samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


class PPOTrainer:
    """The optimizer, KL controller and minibatch RNG around a policy; `update` runs one PPO step.

    A new trainer has a fresh optimizer, the initial kl_coef and an RNG seeded with `seed`; it
    leaves the policy's weights alone (`Checkpoints.load_latest` restores all of it on resume).
    """

    def __init__(self, policy: Policy, cfg: PPOConfig, seed: int = 0) -> None:
        self.policy = policy
        self.cfg = cfg
        self.seed = seed
        self._fresh_training_state()

    def reset(self) -> None:
        """Back to the base policy, as a new run would start it."""
        self.policy.reset()
        self._fresh_training_state()

    def _fresh_training_state(self) -> None:
        self.optimizer = torch.optim.Adam(self.policy.trainable_parameters(), lr=self.cfg.learning_rate, eps=_ADAM_EPS)
        self.kl_controller = AdaptiveKLController(self.cfg.init_kl_coef, self.cfg.target_kl, self.cfg.kl_horizon)
        self.generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict:
        """Everything besides the weights that an exact resume needs."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "kl_coef": self.kl_controller.value,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.kl_controller.value = float(state["kl_coef"])
        self.generator.set_state(state["generator"])

    def update(self, experiences: Sequence[Experience], rewards: Sequence[float] | None = None) -> PPOStats:
        """One PPO update (epochs x minibatches) on a scored batch, learning from `rewards` in place of the
        experiences' own when given; returns its stats."""
        cfg, policy = self.cfg, self.policy
        _validate(experiences, cfg, rewards)
        policy.eval()
        batch = collate(experiences, policy.pad_token_id, policy.device, rewards)
        mask = batch.completion_mask

        old_logprobs, ref_logprobs, old_values, old_entropy = rollout_scores(policy, batch, cfg.minibatch_size)
        logprob_gap = logprob_gap_of(batch, old_logprobs, cfg.logprob_tolerance)
        kl_per_token = torch.where(mask, old_logprobs - ref_logprobs, 0.0)  # k1: the reward penalty
        kl = sequence_kl(old_logprobs, ref_logprobs, mask).mean().item()  # k3: the stat and the controller
        kl_coef = self.kl_controller.value
        groups = group_ids(experiences).to(policy.device)
        advantages, returns = advantages_and_returns(batch, kl_per_token, kl_coef, old_values, groups, cfg)

        step_stats: list[dict[str, float]] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(batch), generator=self.generator).to(policy.device)
            for rows in order.split(cfg.minibatch_size):
                if cfg.max_approx_kl is not None and step_stats and step_stats[-1]["approx_kl"] > cfg.max_approx_kl:
                    break  # the policy has moved far enough from the one that sampled the batch
                minibatch = batch.select(rows)
                width = minibatch.completion_ids.shape[1]
                step_stats.append(
                    self._minibatch_step(
                        minibatch,
                        old_logprobs[rows, :width],
                        old_values[rows, :width],
                        advantages[rows, :width],
                        None if returns is None else returns[rows, :width],
                    )
                )

        self.kl_controller.update(kl, len(experiences))
        mean = {key: sum(s[key] for s in step_stats) / len(step_stats) for key in step_stats[0]}
        return PPOStats(
            policy_loss=mean["policy_loss"],
            value_loss=mean["value_loss"] if cfg.advantage == "gae" else None,
            entropy=mean["entropy"],
            rollout_entropy=masked_mean(old_entropy, mask).item(),
            kl=kl,
            approx_kl=mean["approx_kl"],
            clip_fraction=mean["clip_fraction"],
            grad_norm=mean["grad_norm"],
            kl_coef=kl_coef,
            explained_variance=None if returns is None else explained_variance(old_values, returns, mask),
            logprob_gap=logprob_gap,
            steps=len(step_stats),
        )

    def _minibatch_step(
        self,
        minibatch: TokenBatch,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor | None,
    ) -> dict[str, float]:
        cfg = self.cfg
        logits, values = self.policy.completion_outputs(
            minibatch.input_ids, minibatch.attention_mask, minibatch.logit_positions
        )
        losses = ppo_losses(
            logits,
            values,
            minibatch.completion_ids,
            minibatch.completion_mask,
            old_logprobs,
            old_values,
            advantages,
            returns,
            cfg,
        )
        loss = losses["policy_loss"] - cfg.ent_coef * losses["entropy"] + cfg.vf_coef * losses["value_loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.trainable_parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        return {key: value.item() for key, value in losses.items()} | {"grad_norm": grad_norm.item()}


# -- phases ---------------------------------------------------------------------------------


def collate(
    experiences: Sequence[Experience],
    pad_token_id: int,
    device: torch.device,
    rewards: Sequence[float] | None = None,
) -> TokenBatch:
    """Right-pad prompt+completion rows; completion-aligned tensors start at the first completion token. The
    terminal rewards are `rewards` when given, else the experiences' own."""
    lengths = [len(e.prompt_token_ids) + len(e.completion_token_ids) for e in experiences]
    completion_lengths = [len(e.completion_token_ids) for e in experiences]
    size, length, completion_length = len(experiences), max(lengths), max(completion_lengths)
    input_ids = torch.full((size, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((size, length), dtype=torch.long)
    completion_ids = torch.full((size, completion_length), pad_token_id, dtype=torch.long)
    generation_logprobs = torch.zeros((size, completion_length))
    logit_positions = torch.zeros((size, completion_length), dtype=torch.long)
    for row, e in enumerate(experiences):
        prompt_length, n = len(e.prompt_token_ids), len(e.completion_token_ids)
        input_ids[row, : lengths[row]] = torch.tensor(e.prompt_token_ids + e.completion_token_ids)
        attention_mask[row, : lengths[row]] = 1
        completion_ids[row, :n] = torch.tensor(e.completion_token_ids)
        generation_logprobs[row, :n] = torch.tensor(e.logprobs)
        # The hidden state at position p predicts token p + 1; padding rows point at the last real token.
        logit_positions[row] = (prompt_length - 1 + torch.arange(completion_length)).clamp(max=lengths[row] - 1)
    completion_lengths_t = torch.tensor(completion_lengths)
    completion_mask = torch.arange(completion_length)[None, :] < completion_lengths_t[:, None]
    return TokenBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        logit_positions=logit_positions.to(device),
        completion_ids=completion_ids.to(device),
        completion_mask=completion_mask.to(device),
        generation_logprobs=generation_logprobs.to(device),
        rewards=torch.tensor(
            [e.reward for e in experiences] if rewards is None else list(rewards), dtype=torch.float32, device=device
        ),
        lengths=torch.tensor(lengths, device=device),
        completion_lengths=completion_lengths_t.to(device),
    )


def token_logprobs(log_probs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token, picked from the normalised fp32 log-probs `[..., vocab]` of its position."""
    return log_probs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def rollout_scores(
    policy: Policy, batch: TokenBatch, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Old log-probs, values and entropies from the policy, reference log-probs with its adapters off; `[B, C]` each."""
    old_logprobs = torch.zeros_like(batch.generation_logprobs)
    ref_logprobs = torch.zeros_like(batch.generation_logprobs)
    old_values = torch.zeros_like(batch.generation_logprobs)
    old_entropy = torch.zeros_like(batch.generation_logprobs)
    for rows in torch.arange(len(batch), device=policy.device).split(chunk_size):
        chunk = batch.select(rows)
        width = chunk.completion_ids.shape[1]
        logits, values = policy.completion_outputs(chunk.input_ids, chunk.attention_mask, chunk.logit_positions)
        log_probs = logits.log_softmax(-1)
        old_logprobs[rows, :width] = token_logprobs(log_probs, chunk.completion_ids)
        old_values[rows, :width] = values
        old_entropy[rows, :width] = token_entropy(log_probs)
        with policy.reference():
            ref_logits, _ = policy.completion_outputs(chunk.input_ids, chunk.attention_mask, chunk.logit_positions)
        ref_logprobs[rows, :width] = token_logprobs(ref_logits.log_softmax(-1), chunk.completion_ids)
    mask = batch.completion_mask
    return (
        torch.where(mask, old_logprobs, 0.0),
        torch.where(mask, ref_logprobs, 0.0),
        torch.where(mask, old_values, 0.0),
        torch.where(mask, old_entropy, 0.0),
    )


def logprob_gap_of(batch: TokenBatch, old_logprobs: torch.Tensor, tolerance: float) -> float:
    """Mean |generation log-prob - recomputed log-prob| per token; warns when it says the batch is off-policy."""
    gap = masked_mean((batch.generation_logprobs - old_logprobs).abs(), batch.completion_mask).item()
    if gap > tolerance:
        log.warning(
            "generation log-probs differ from a forward pass of the same policy by %.2e per token "
            "(tolerance %.0e): the samples were not drawn from the policy being trained, so this "
            "update is off-policy. Sample with temperature 1, top_p 1, top_k 0, no logits "
            "processors and the training dtype, or raise ppo.logprob_tolerance to accept it.",
            gap,
            tolerance,
        )
    return gap


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """KL(policy || reference) of each sampled completion [B], Schulman's k3 summed over its tokens.

    With `r = p_ref / p_policy` per token, `(r - 1) - log r` is never negative and its expectation
    under the policy's samples is the token's KL, so the sum is a non-negative, unbiased estimate
    of the sequence KL (exactly 0 when the policy is the reference).
    """
    log_ratio = torch.where(mask, ref_logprobs - logprobs, 0.0)
    return (log_ratio.exp() - 1 - log_ratio).sum(1)


def token_rewards(
    kl_per_token: torch.Tensor, terminal_rewards: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: the KL penalty on every token plus the terminal reward on the last real one."""
    rewards = torch.where(mask, -kl_coef * kl_per_token, 0.0)
    last = mask.sum(1) - 1
    rewards[torch.arange(len(rewards), device=rewards.device), last] += terminal_rewards
    return rewards


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, gae_lambda: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded completions; the state after the last token is terminal.

    Returns `(advantages, returns)` with `returns = advantages + values`, both zero on padding.
    """
    values = torch.where(mask, values, 0.0)
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    width = rewards.shape[1]
    for t in reversed(range(width)):
        next_value = values[:, t + 1] if t + 1 < width else torch.zeros_like(next_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(mask[:, t], delta + gamma * gae_lambda * next_advantage, 0.0)
        advantages[:, t] = next_advantage
    return advantages, torch.where(mask, advantages + values, 0.0)


def advantages_and_returns(
    batch: TokenBatch,
    kl_per_token: torch.Tensor,
    kl_coef: float,
    old_values: torch.Tensor,
    groups: torch.Tensor,
    cfg: PPOConfig,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages `[B, C]`, and the value targets (None without a critic), for `cfg.advantage`.

    "gae": the KL penalty on every token and the reward on the last, through the critic's values.
    "group": one advantage per completion, its KL-penalised reward minus the mean of the others of its
    prompt group, spread over its tokens.
    """
    mask = batch.completion_mask
    final = centred_ranks(batch.rewards) if cfg.reward_ranks else batch.rewards
    if cfg.advantage == "gae":
        rewards = token_rewards(kl_per_token, final, mask, kl_coef)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask, shift_mean=True)
        return advantages, returns
    sequence_advantages = group_advantages(final - kl_coef * kl_per_token.sum(1), groups)
    if cfg.whiten_advantages:
        sequence_advantages = whiten(sequence_advantages, torch.ones_like(mask[:, 0]), shift_mean=False)
    return torch.where(mask, sequence_advantages[:, None], 0.0), None


def centred_ranks(rewards: torch.Tensor) -> torch.Tensor:
    """Each reward's rank in the batch, scaled to [-0.5, 0.5]: the lowest -0.5, the highest 0.5, ties their mean
    rank (a batch of equal rewards, or of one, is all 0)."""
    if len(rewards) < 2:
        return torch.zeros_like(rewards)
    ranks = torch.from_numpy(rankdata(rewards.detach().cpu().numpy(), method="average"))
    return ((ranks - 1) / (len(rewards) - 1) - 0.5).to(rewards.dtype).to(rewards.device)


def group_ids(experiences: Sequence[Experience]) -> torch.Tensor:
    """Index of each experience's prompt group (same prompt token ids = same group)."""
    groups: dict[tuple[int, ...], int] = {}
    return torch.tensor([groups.setdefault(tuple(e.prompt_token_ids), len(groups)) for e in experiences])


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline: reward minus the mean reward of the other samples of the same prompt."""
    sizes = torch.bincount(groups).to(rewards.dtype)
    totals = torch.zeros_like(sizes).index_add(0, groups, rewards)
    others_mean = (totals[groups] - rewards) / (sizes[groups] - 1)
    return rewards - others_mean


def whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool) -> torch.Tensor:
    """Scale to unit variance over the masked entries; re-centre to mean zero only if `shift_mean`."""
    mean = masked_mean(values, mask)
    scale = torch.rsqrt(masked_mean((values - mean) ** 2, mask) + 1e-8)
    whitened = (values - mean) * scale if shift_mean else values * scale
    return torch.where(mask, whitened, 0.0)


def ppo_losses(
    logits: torch.Tensor,
    values: torch.Tensor,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor | None,
    cfg: PPOConfig,
) -> dict[str, torch.Tensor]:
    """Clipped surrogate, clipped value loss and entropy of one minibatch, with the stats computed beside them."""
    log_probs = logits.log_softmax(-1)
    log_ratio = torch.where(mask, token_logprobs(log_probs, completion_ids) - old_logprobs, 0.0)
    ratio = log_ratio.exp()
    policy_loss = clipped_surrogate_loss(ratio, advantages, mask, cfg.clip_coef, cfg.clip_coef_high)
    entropy = masked_mean(token_entropy(log_probs), mask)
    if returns is None:
        value_loss = torch.zeros((), device=logits.device)
    else:
        value_loss = clipped_value_loss(values, old_values, returns, mask, cfg.vf_clip)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        lower, upper = ratio_bounds(cfg.clip_coef, cfg.clip_coef_high)
        clip_fraction = masked_mean(((ratio < lower) | (ratio > upper)).float(), mask)
    return {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }


def clipped_surrogate_loss(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_coef: float,
    clip_coef_high: float | None = None,
) -> torch.Tensor:
    """PPO's pessimistic objective, negated: max(-A r, -A clip(r, 1 - c, 1 + c_high)) averaged over tokens.

    `clip_coef_high` None is the symmetric range (c_high = c).
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(*ratio_bounds(clip_coef, clip_coef_high))
    return masked_mean(torch.max(unclipped, clipped), mask)


def ratio_bounds(clip_coef: float, clip_coef_high: float | None) -> tuple[float, float]:
    """The range PPO keeps the probability ratio in: [1 - c, 1 + c_high], with c_high = c unless given."""
    return 1 - clip_coef, 1 + (clip_coef if clip_coef_high is None else clip_coef_high)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, vf_clip: float
) -> torch.Tensor:
    """Half the squared error, taking the worse of the new value and the value clipped near the old one."""
    values_clipped = old_values + (values - old_values).clamp(-vf_clip, vf_clip)
    squared_error = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    return 0.5 * masked_mean(squared_error, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 a constant one."""
    variance = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    residual = returns - values
    residual_variance = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return math.nan if variance.item() == 0 else 1.0 - (residual_variance / variance).item()


def token_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of the next-token distribution at each position, from log-probs `[..., vocab]`."""
    probs = log_probs.exp()
    return -torch.special.xlogy(probs, probs).sum(-1)  # 0 log 0 = 0, not nan


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the entries where `mask` is true (padding never counts, even if it holds inf)."""
    return torch.where(mask, values, 0.0).sum() / mask.sum()


def _validate(experiences: Sequence[Experience], cfg: PPOConfig, rewards: Sequence[float] | None = None) -> None:
    if not experiences:
        raise ValueError("PPO update needs at least one scored experience")
    if rewards is not None and (len(rewards) != len(experiences) or not all(map(math.isfinite, rewards))):
        raise ValueError(f"{len(rewards)} rewards to learn from for {len(experiences)} experiences, or not finite")
    for e in experiences:
        where = f"experience {e.run}/{e.cycle}/{e.index}"
        if not e.prompt_token_ids or not e.completion_token_ids:
            raise ValueError(f"{where}: empty prompt or completion token ids; nothing to train on")
        if len(e.logprobs) != len(e.completion_token_ids):
            raise ValueError(
                f"{where}: {len(e.logprobs)} log-probs for {len(e.completion_token_ids)} completion tokens; "
                "the generation backend must report one log-prob per completion token"
            )
        if not math.isfinite(e.reward):
            raise ValueError(f"{where}: reward {e.reward} is not finite; fix reward shaping")
    if cfg.advantage == "group":
        sizes = torch.bincount(group_ids(experiences))
        if int(sizes.min()) < 2:
            raise ValueError(
                "advantage=group needs at least 2 samples of every prompt in the batch "
                f"(group sizes {sizes.tolist()}); generate ppo.group_size samples per prompt"
            )
