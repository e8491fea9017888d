"""Reward shaping: clipped and monotone in the net Sharpe, a fixed ladder below −1 for every failure."""

import math
from itertools import pairwise

import numpy as np
import pytest

from sharpe_rl.config import RewardConfig
from sharpe_rl.sandbox.contract import FORMAT_ERRORS, ErrorClass
from sharpe_rl.scoring import PENALTY_RUNG, Degenerate, Metrics, probabilistic_sharpe_ratio, shape_reward

#: The clipped net Sharpe (luck_correction none): the ladder and the clip; the evidence reward has its own tests.
CFG = RewardConfig(luck_correction="none")


def valid(sharpe_net: float) -> Metrics:
    return Metrics(valid=True, n_bars=100, sharpe_net=sharpe_net)


def test_every_error_class_has_a_rung_and_format_errors_are_format():
    assert set(PENALTY_RUNG) == set(ErrorClass)
    assert {cls for cls, rung in PENALTY_RUNG.items() if rung == "format"} == FORMAT_ERRORS


@pytest.mark.parametrize("error", list(ErrorClass))
def test_each_error_class_gets_its_rung(error):
    expected = {"format": CFG.penalty_format, "runtime": CFG.penalty_runtime}[PENALTY_RUNG[error]]
    assert shape_reward(error, CFG) == expected


def test_the_ladder_is_ordered_and_every_valid_model_beats_every_failure():
    worst_valid = shape_reward(valid(-1e9), CFG)
    assert worst_valid == -1.0
    format_error = shape_reward(ErrorClass.syntax, CFG)
    runtime_error = shape_reward(ErrorClass.missing_column, CFG)
    assert format_error < runtime_error < worst_valid
    assert max(shape_reward(error, CFG) for error in ErrorClass) < worst_valid


def test_degenerate_metrics_earn_the_bad_predictions_penalty():
    for reason in Degenerate:
        invalid = Metrics(valid=False, reason=reason, message="degenerate")
        assert shape_reward(invalid, CFG) == shape_reward(ErrorClass.bad_predictions, CFG) == CFG.penalty_runtime


def test_valid_reward_is_the_clipped_sharpe_scaled_to_unit():
    assert shape_reward(valid(0.0), CFG) == 0.0
    assert shape_reward(valid(1.5), CFG) == pytest.approx(1.5 / CFG.sharpe_clip)
    assert shape_reward(valid(CFG.sharpe_clip), CFG) == 1.0
    assert shape_reward(valid(50.0), CFG) == 1.0
    assert shape_reward(valid(-50.0), CFG) == -1.0


@pytest.mark.parametrize(
    "cfg",
    [CFG, RewardConfig(luck_correction="none", sharpe_clip=0.5, penalty_runtime=-1.01, penalty_format=-3)],
)
def test_reward_is_monotone_bounded_and_finite_over_many_sharpes(cfg):
    rng = np.random.default_rng(0)
    sharpes = np.sort(
        np.concatenate([rng.normal(0, 3, 2000), rng.uniform(-1e6, 1e6, 200), [0.0, cfg.sharpe_clip, -cfg.sharpe_clip]])
    )
    rewards = [shape_reward(valid(float(s)), cfg) for s in sharpes]
    assert all(math.isfinite(r) and -1.0 <= r <= 1.0 for r in rewards)
    assert all(a <= b for a, b in pairwise(rewards))
    # strictly increasing inside the clip range: a better Sharpe is always worth more there
    inside = [(s, r) for s, r in zip(sharpes, rewards, strict=True) if abs(s) < cfg.sharpe_clip]
    assert len(inside) > 100
    assert all(r_a < r_b for (s_a, r_a), (s_b, r_b) in pairwise(inside) if s_a < s_b)
    assert all(cfg.penalty_runtime < -1.0 <= r for r in rewards)


# -- a reward for skill, not luck -------------------------------------------------------------


def daily(sharpe_net: float) -> Metrics:
    """Metrics of two years of daily net returns, normal (skewness 0, kurtosis 3)."""
    return Metrics(valid=True, n_bars=730, periods_per_year=365.0, sharpe_net=sharpe_net, skewness=0.0, kurtosis=3.0)


@pytest.mark.parametrize("correction", ["deflated", "shrunk"])
def test_the_same_sharpe_earns_less_as_the_runs_trials_grow(correction):
    cfg = RewardConfig(luck_correction=correction)
    trials = [1, 2, 5, 20, 100, 400, 2000]
    rewards = [shape_reward(daily(1.5), cfg, n_trials=n, trials_sharpe_variance=0.5) for n in trials]
    assert all(a > b for a, b in pairwise(rewards)), rewards
    assert all(-1.0 <= r <= 1.0 for r in rewards)
    # the best of 2000 zero-skill trials with Sharpe variance 0.5 is expected near 2.4: a 1.5 is luck
    assert rewards[-1] < 0 < rewards[0]


def test_with_one_trial_the_corrections_are_the_psr_and_the_plain_sharpe():
    metrics = daily(1.5)
    deflated = shape_reward(metrics, RewardConfig(luck_correction="deflated"), n_trials=1, trials_sharpe_variance=0.5)
    assert deflated == pytest.approx(2 * _psr(metrics) - 1)
    shrunk = shape_reward(metrics, RewardConfig(luck_correction="shrunk"), n_trials=1, trials_sharpe_variance=0.5)
    assert shrunk == shape_reward(metrics, CFG) == pytest.approx(0.5)


def _psr(metrics: Metrics) -> float:
    return probabilistic_sharpe_ratio(metrics.sharpe_net / math.sqrt(365), metrics.n_bars, 0.0, 3.0)


@pytest.mark.parametrize("correction", ["deflated", "shrunk"])
def test_corrected_rewards_stay_monotone_in_the_sharpe_and_above_every_failure(correction):
    cfg = RewardConfig(luck_correction=correction)
    sharpes = np.linspace(-6, 6, 241)
    rewards = [shape_reward(daily(float(s)), cfg, n_trials=300, trials_sharpe_variance=1.0) for s in sharpes]
    assert all(a <= b for a, b in pairwise(rewards))
    assert all(math.isfinite(r) and -1.0 <= r <= 1.0 for r in rewards)
    for error in ErrorClass:
        assert shape_reward(error, cfg, n_trials=300, trials_sharpe_variance=1.0) == shape_reward(error, CFG)


def test_the_deflated_reward_needs_the_return_moments():
    with pytest.raises(ValueError, match="skewness"):
        shape_reward(valid(1.0), RewardConfig(luck_correction="deflated"), n_trials=10, trials_sharpe_variance=1.0)


# -- the default: evidence of skill, in units of the panel's no-skill noise --------------------------

EVIDENCE = RewardConfig()


def test_the_default_reward_is_the_evidence_reward():
    assert EVIDENCE.luck_correction == "evidence"


def test_evidence_is_the_sharpe_over_the_no_skill_noise_less_the_luck_of_the_runs_trials():
    sigma = 0.8
    assert shape_reward(valid(0.0), EVIDENCE, noskill_sigma=sigma) == 0.0
    assert shape_reward(valid(2 * sigma), EVIDENCE, noskill_sigma=sigma) == pytest.approx(0.5)  # x = 1: 1 / (1 + 1)
    assert shape_reward(valid(-6 * sigma), EVIDENCE, noskill_sigma=sigma) == pytest.approx(-0.75)  # x = -3
    # the same Sharpe on a noisier panel is less evidence
    assert shape_reward(valid(1.0), EVIDENCE, noskill_sigma=2.0) < shape_reward(valid(1.0), EVIDENCE, noskill_sigma=0.5)
    # a lucky 1.3-sigma draw among a night's trials earns less than nothing; 3 sigmas as the first trial a lot
    lucky = shape_reward(valid(1.3 * sigma), EVIDENCE, noskill_sigma=sigma, n_trials=768)
    strong = shape_reward(valid(3 * sigma), EVIDENCE, noskill_sigma=sigma, n_trials=1)
    assert lucky < 0 < 0.55 < strong


def test_evidence_rewards_are_graded_everywhere_monotone_and_above_every_failure():
    sigmas = np.linspace(-30, 30, 601)
    rewards = [shape_reward(valid(float(z)), EVIDENCE, noskill_sigma=1.0, n_trials=16) for z in sigmas]
    assert all(a < b for a, b in pairwise(rewards))  # strictly: PPO can tell -8 sigmas from -6
    assert all(EVIDENCE.penalty_runtime < -1.0 < r < 1.0 for r in rewards)
    assert rewards[220] - rewards[200] > 0.02  # -8 vs -10 sigmas: still apart
    for error in ErrorClass:
        assert shape_reward(error, EVIDENCE) < min(rewards)


def test_the_evidence_reward_needs_the_panels_no_skill_noise():
    with pytest.raises(ValueError, match="no-skill noise"):
        shape_reward(valid(1.0), EVIDENCE)
    assert shape_reward(ErrorClass.syntax, EVIDENCE) == EVIDENCE.penalty_format  # a failure does not
