"""evaluate-policy's statistics: known answers, intervals that exclude 0 only for a real difference, and its checks.

The end-to-end flow (sampling both policies of a real run, executing them in the sandbox) is in
tests/test_pipeline.py, beside the run it evaluates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sharpe_rl.evaluate_policy import (
    BEST_OF,
    ComparisonError,
    best_of_k_dsr,
    compare,
    comparison_path,
    entropy_bits,
    plan_comparison,
    window_statistics,
)
from sharpe_rl.facts import load_comparison
from sharpe_rl.reset import reset_runs
from sharpe_rl.scoring import deflated_sharpe_ratio

FAMILIES = ["lightgbm", "sklearn/trees", "sklearn/linear", "xgboost"]


def sample(policy: str, n: int, run_share: float, sharpe: float, seed: int, families=FAMILIES) -> list[dict]:
    """n rows of one policy: the first round(run_share * n) ran (Sharpe ~ N(sharpe, 1)), the rest failed."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        ran = index < round(run_share * n)
        moments = {"sharpe_net": float(rng.normal(sharpe, 1.0)), "n_bars": 300.0, "periods_per_year": 365.0}
        moments |= {"skewness": 0.0, "kurtosis": 3.0}
        rows.append(
            {"policy": policy, "index": index, "completion": "c", "status": "ok" if ran else "syntax"}
            | {"family": families[index % len(families)] if ran else None}
            | {f"reward_{k}": v if ran else None for k, v in moments.items()}
            | {"holdout_status": "ok" if ran else None}
            | {f"holdout_{k}": v if ran else None for k, v in moments.items()}
        )
    return rows


def table(base: list[dict], final: list[dict]) -> dict[tuple[str, str], dict]:
    compared = compare(pl.DataFrame(base + final, infer_schema_length=None), resamples=500)
    return {(row["window"], row["statistic"]): row for row in compared.to_dicts()}


def test_the_statistics_of_a_known_sample():
    rows = pl.DataFrame(sample("base", 64, run_share=0.75, sharpe=0.0, seed=1), infer_schema_length=None)
    stats = window_statistics(rows, "reward")
    sharpes = rows["reward_sharpe_net"].drop_nulls()
    assert stats["run_share"] == 0.75
    assert stats["mean_sharpe"] == pytest.approx(sharpes.mean())
    assert stats["family_entropy_bits"] == pytest.approx(2.0)  # four families, equally often
    assert 0 <= stats[f"best_of_{BEST_OF}_dsr"] <= 1


def test_best_of_16_is_the_mean_dsr_of_each_blocks_best_deflated_by_its_trials():
    sharpe = np.array([0.5, 2.0, -1.0, np.nan] * 8)  # two blocks of 16; 12 scored in each
    moments = {"sharpe_net": sharpe, "n_bars": np.full(32, 300.0), "periods_per_year": np.full(32, 365.0)}
    moments |= {"skewness": np.zeros(32), "kurtosis": np.full(32, 3.0)}
    scored = sharpe[:16][~np.isnan(sharpe[:16])]
    expected = deflated_sharpe_ratio(2.0 / math.sqrt(365), 300, 0.0, 3.0, 12, float(np.var(scored)) / 365)
    assert best_of_k_dsr(moments, 16) == pytest.approx(expected)
    nothing = {k: np.where(np.isnan(sharpe), np.nan, np.nan) if k == "sharpe_net" else v for k, v in moments.items()}
    assert best_of_k_dsr(nothing, 16) == 0.0  # no block scored anything


def test_entropy_bits():
    assert entropy_bits([]) == 0.0
    assert entropy_bits(["a"] * 5) == 0.0
    assert entropy_bits(["a", "b"]) == pytest.approx(1.0)


def test_a_policy_that_runs_more_and_earns_more_shows_intervals_that_exclude_zero():
    rows = table(sample("base", 64, 0.5, -0.5, seed=1), sample("final", 64, 1.0, 1.0, seed=2))
    for window in ("reward", "holdout"):
        share, mean = rows[(window, "run_share")], rows[(window, "mean_sharpe")]
        assert share["difference"] == pytest.approx(0.5) and share["low"] > 0
        assert mean["difference"] > 0 and mean["low"] > 0
        assert mean["low"] <= mean["difference"] <= mean["high"]


def test_the_best_of_16_interval_holds_its_difference_when_one_block_changes():
    # The end-to-end case a bootstrap of single completions got wrong: one experiment written 48 times
    # then 16 failures (base), against the same experiment 56 times then another one 8 times (final).
    # Resampled one by one, completions were dealt into blocks unlike any either policy wrote, and every
    # resampled difference fell on one side of the observed one.
    def policy(name: str, sharpes: list[float | None]) -> list[dict]:
        rows = sample(name, 64, 1.0, 0.0, seed=0)
        for row, sharpe in zip(rows, sharpes, strict=True):
            for window in ("reward", "holdout"):
                row[f"{window}_sharpe_net"] = sharpe
            if sharpe is None:
                row |= {"status": "syntax", "family": None, "holdout_status": None}
        return rows

    base = policy("base", [0.4] * 48 + [None] * 16)
    final = policy("final", [0.4] * 56 + [1.1] * 8)
    best = table(base, final)[("reward", f"best_of_{BEST_OF}_dsr")]
    assert best["difference"] > 0
    assert best["low"] <= best["difference"] <= best["high"]


def test_two_samples_of_the_same_policy_show_intervals_that_contain_zero():
    rows = table(sample("base", 64, 0.8, 0.0, seed=3), sample("final", 64, 0.8, 0.0, seed=4))
    for (window, statistic), row in rows.items():
        assert row["low"] <= 0 <= row["high"], (window, statistic, row)


def test_a_collapse_onto_one_family_lowers_the_entropy():
    collapsed = sample("final", 64, 1.0, 0.0, seed=2, families=["lightgbm"])
    row = table(sample("base", 64, 1.0, 0.0, seed=1), collapsed)[("reward", "family_entropy_bits")]
    assert row["final"] == 0.0 and row["difference"] == pytest.approx(-2.0) and row["high"] < 0


def test_samples_of_different_seeds_are_refused():
    base, final = sample("base", 64, 1.0, 0.0, seed=1), sample("final", 63, 1.0, 0.0, seed=2)
    with pytest.raises(ComparisonError, match="same indices"):
        compare(pl.DataFrame(base + final, infer_schema_length=None))


def test_too_few_completions_or_an_unknown_run_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(ComparisonError, match="at least 64"):
        plan_comparison(tmp_path, "some-run", n=32)
    with pytest.raises(ComparisonError, match="no run 'missing'"):
        plan_comparison(tmp_path, "missing", n=64)


def test_a_reset_archives_the_evaluations_with_the_checkpoints_they_measured(tmp_path):
    stored = comparison_path(tmp_path, "run")
    stored.parent.mkdir(parents=True)
    stored.write_text("{}")
    archived = reset_runs(tmp_path)
    assert load_comparison(tmp_path, "run") is None
    assert Path(archived["policy evaluations"], "run.json").read_text() == "{}"
