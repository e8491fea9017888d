"""The detectable difference means what the headline says: a true gain that large is seen 4 times in 5."""

from __future__ import annotations

import numpy as np
import pytest

from sharpe_rl.power import detectable_difference, pairs_needed


def bootstrap_intervals(differences: np.ndarray, rng: np.random.Generator, resamples: int = 400) -> np.ndarray:
    """95% percentile bootstrap interval of the mean for each row of paired differences (comparisons × pairs)."""
    comparisons, pairs = differences.shape
    drawn = rng.integers(0, pairs, (comparisons, resamples, pairs))
    means = np.take_along_axis(differences[:, None, :], drawn, axis=2).mean(axis=2)
    return np.percentile(means, [2.5, 97.5], axis=1).T


def seen(true_gain: float, pairs: int, rng: np.random.Generator, comparisons: int = 400) -> float:
    """Share of simulated comparisons (pair differences with spread 1 around `true_gain`) whose interval is above 0."""
    intervals = bootstrap_intervals(rng.normal(true_gain, 1.0, (comparisons, pairs)), rng)
    return float((intervals[:, 0] > 0).mean())


def test_a_true_gain_of_the_detectable_size_is_seen_four_times_in_five():
    rng = np.random.default_rng(7)
    pilot = bootstrap_intervals(rng.normal(0.0, 1.0, (200, 64)), rng)  # what one comparison of 64 pairs reports
    smallest = detectable_difference(*np.median(pilot, axis=0))
    assert smallest == pytest.approx(2.8 / np.sqrt(64), rel=0.1)  # 2.8 standard errors of a mean of 64
    assert seen(smallest, 64, rng) == pytest.approx(0.8, abs=0.07)
    assert seen(smallest / 2, 64, rng) < 0.4  # half of it is mostly "not distinguishable"


def test_the_pairs_needed_see_a_smaller_gain_four_times_in_five():
    rng = np.random.default_rng(8)
    low, high = np.median(bootstrap_intervals(rng.normal(0.0, 1.0, (200, 64)), rng), axis=0)
    needed = pairs_needed(64, low, high, 0.2)
    assert needed == pytest.approx(64 * (2.8 / np.sqrt(64) / 0.2) ** 2, rel=0.2)  # about 196
    assert seen(0.2, needed, rng) == pytest.approx(0.8, abs=0.07)
    assert pairs_needed(64, low, high, -0.2) == needed  # a loss as large takes as many
