"""The no-skill band: what zero-skill experiments score on a panel, through the reward's own scoring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from sharpe_rl.config import EvalConfig
from sharpe_rl.data.splits import fold_rows, plan_evaluation, reward_panel, timeline
from sharpe_rl.noskill import NoSkillBand, cached_band, no_skill_band
from sharpe_rl.scoring import score_predictions


def random_walks(n_bars: int, n_symbols: int, seed: int, step: timedelta = timedelta(days=1)) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    frames = []
    for i in range(n_symbols):
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, n_bars)))
        frames.append(
            pl.DataFrame(
                {
                    "timestamp": [start + k * step for k in range(n_bars)],
                    "symbol": f"S{i}",
                    "open": close,
                    "high": close,
                    "low": close,
                    "close": close,
                    "volume": 1.0,
                }
            )
        )
    return (
        pl.concat(frames).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC"))).sort("timestamp", "symbol")
    )


def band_of(panel: pl.DataFrame, cfg: EvalConfig | None = None) -> tuple[NoSkillBand, pl.DataFrame, pl.DataFrame]:
    cfg = cfg or EvalConfig()
    plan = plan_evaluation(timeline(panel), cfg)
    reward = reward_panel(panel, plan)
    rows = fold_rows(reward, plan.folds)
    return no_skill_band(reward, rows, cfg), reward, rows


@pytest.fixture(scope="module")
def short_panel() -> pl.DataFrame:
    return random_walks(300, 4, seed=1)


def test_zero_skill_experiments_fall_inside_the_band_about_95_percent_of_the_time(short_panel):
    band, reward, rows = band_of(short_panel)
    assert band.lo < 0 < band.hi and band.sigma > 0
    rng = np.random.default_rng(123)  # not the band's own draws: an experiment written independently of it
    inside = 0
    for _ in range(200):
        slow = rows.with_columns(p_up=pl.Series(rng.random(rows.height))).with_columns(
            pl.col("p_up").first().over(pl.col("symbol"), (pl.col("timestamp").rank("dense") - 1) // 7)
        )
        sharpe = score_predictions(slow, reward, EvalConfig()).sharpe_net
        inside += band.lo <= sharpe <= band.hi
    assert 0.88 <= inside / 200 <= 1.0


def test_the_band_narrows_with_the_time_scored_and_not_with_the_bar_size(short_panel):
    short = band_of(short_panel)[0]
    longer = band_of(random_walks(1200, 4, seed=2))[0]
    assert longer.sigma == pytest.approx(short.sigma / 2, rel=0.25)  # four times the bars: half the noise
    assert longer.hi - longer.lo < short.hi - short.lo
    # the same 300 days in 6-hour bars (four times the bars, each a quarter of a day): the same noise
    hours = band_of(random_walks(1200, 4, seed=4, step=timedelta(hours=6)), EvalConfig(fee_bps=0))[0]
    days = band_of(random_walks(300, 4, seed=5), EvalConfig(fee_bps=0))[0]
    assert hours.sigma == pytest.approx(days.sigma, rel=0.25)


def test_faster_random_rankings_pay_more_costs_and_a_static_one_earns_nothing():
    band = band_of(random_walks(2000, 4, seed=6))[0]
    assert list(band.mean_by_speed) == ["every 1 decision", "every 7 decisions", "every 30 decisions"]
    means = list(band.mean_by_speed.values())
    assert means[0] < means[1] < means[2] + 0.1
    # timing only: a fixed ranking earns nothing and pays its entry: one cost over n flat bars, a Sharpe of
    # -sqrt(periods per year / n), about one unit of noise below 0
    assert band.static == pytest.approx(-((365 / band.n_bars) ** 0.5), rel=0.05)


def test_a_speed_that_would_hold_a_ranking_for_most_of_a_fold_is_left_out(short_panel):
    assert list(band_of(short_panel)[0].mean_by_speed) == ["every 1 decision"]  # folds of 30 bars: 7 is too slow


def test_the_band_is_said_in_the_words_every_view_uses(short_panel):
    band = band_of(short_panel)[0]
    assert band.sentence() == (
        f"no-skill band: a random ranking scores between {band.lo:+.2f} and {band.hi:+.2f} (95%)"
    )
    assert band.evidence(2 * band.sigma) == pytest.approx(2.0)


def test_a_wide_band_or_one_that_reaches_the_cap_is_warned_with_what_would_narrow_it(short_panel):
    band = band_of(short_panel)[0]
    reaching = band.model_copy(update={"hi": 3.5, "sigma": 0.5})
    assert "reaches the reward's cap" in reaching.warning(3.0)
    assert "A longer window narrows the band" in reaching.warning(3.0)
    noisy = band.model_copy(update={"hi": 2.0, "sigma": 1.4})
    assert "cannot be told from luck" in noisy.warning(None)
    quiet = band.model_copy(update={"hi": 1.0, "sigma": 0.4})
    assert quiet.warning(3.0) is None and quiet.warning(None) is None


def test_the_band_is_cached_by_the_datasets_hash_and_the_settings(tmp_path, short_panel):
    _, reward, rows = band_of(short_panel)
    first = cached_band(tmp_path, "a" * 64, reward, rows, EvalConfig())
    (stored,) = (tmp_path / "noskill").glob("*.json")
    stored.write_text(first.model_copy(update={"lo": -99.0}).model_dump_json())
    assert cached_band(tmp_path, "a" * 64, reward, rows, EvalConfig()).lo == -99.0  # read, not recomputed
    assert cached_band(tmp_path, "b" * 64, reward, rows, EvalConfig()) == first  # another dataset: its own
    other = cached_band(tmp_path, "a" * 64, reward, rows, EvalConfig(fee_bps=50))
    assert other.mean_by_speed["every 1 decision"] < first.mean_by_speed["every 1 decision"]
    assert len(list((tmp_path / "noskill").glob("*.json"))) == 3
