"""Does the reward carry over? The reward–holdout agreement and the probability of backtest overfitting."""

from __future__ import annotations

import numpy as np
import pytest

from sharpe_rl.selection import agreement, probability_of_backtest_overfitting


def test_agreement_is_spearmans_rho_with_a_bootstrap_interval():
    rng = np.random.default_rng(0)
    reward = rng.normal(size=40)
    carried = agreement(reward, reward + rng.normal(0, 0.3, 40))
    assert carried is not None and carried.lo > 0.6 and carried.rho > carried.lo
    assert "carries over" in carried.sentence()
    unrelated = agreement(reward, rng.normal(size=40))
    assert unrelated is not None and unrelated.lo < 0 < unrelated.hi
    assert "carries no transferable signal" in unrelated.sentence()
    reversed_ = agreement(reward, -reward)
    assert reversed_.rho == pytest.approx(-1.0) and reversed_.hi < 0


def test_agreement_needs_a_few_experiments_with_both_numbers():
    assert agreement(np.arange(4.0), np.arange(4.0)) is None
    with_gaps = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0])
    assert agreement(with_gaps, with_gaps).n == 6


def test_pbo_is_about_a_half_for_noise_and_zero_for_a_persistent_edge():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, (640, 50))
    assert 0.3 < probability_of_backtest_overfitting(noise) < 0.7
    edge = noise.copy()
    edge[:, 7] += 0.004  # one experiment is better in every block
    assert probability_of_backtest_overfitting(edge) < 0.05


def test_pbo_is_high_when_the_best_in_sample_is_the_worst_out_of_sample():
    rng = np.random.default_rng(2)
    bars = 640
    first_half = np.arange(bars) < bars // 2
    good_then_bad = np.where(first_half, 0.01, -0.01) + rng.normal(0, 0.001, bars)
    bad_then_good = -good_then_bad + rng.normal(0, 0.001, bars)
    # every split with more of one half in sample picks the one that goes bad out of sample (62% of the splits);
    # the splits with four blocks of each half leave only noise to choose by
    assert probability_of_backtest_overfitting(np.column_stack([good_then_bad, bad_then_good])) > 0.62


def test_pbo_needs_two_experiments_and_two_bars_a_block():
    assert probability_of_backtest_overfitting(np.zeros((100, 1))) is None
    assert probability_of_backtest_overfitting(np.zeros((20, 5))) is None
