"""The `binance` source on zips written in Binance's exact dump format: parsing, checksums, resume, ms/µs."""

import hashlib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from data_fixtures import FakeDumps, kline_zip

from sharpe_rl.data import SourceError, load_panel
from sharpe_rl.data.sources.binance import fetch_binance


def fetch(dumps: FakeDumps, tmp_path: Path, symbols=("BTCUSDT",), start=date(2024, 1, 1), end=date(2024, 2, 29), **kw):
    return fetch_binance(
        list(symbols), "1d", start, end, tmp_path / "out.parquet", cache_dir=tmp_path / "cache", fetch=dumps, **kw
    )


def test_monthly_zips_become_a_panel_with_verified_provenance(tmp_path):
    dumps = FakeDumps()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        for month in (date(2024, 1, 1), date(2024, 2, 1)):
            dumps.publish(symbol, month, kline_zip(symbol, "1d", month))
    result = fetch(dumps, tmp_path, symbols=("btcusdt", "ETHUSDT"), start=date(2024, 1, 10), end=date(2024, 2, 5))
    panel = load_panel(result.path)
    assert panel.height == 2 * 27  # 2024-01-10 .. 2024-02-05 inclusive
    assert panel.row(0) == (datetime(2024, 1, 10, tzinfo=UTC), "BTCUSDT", 110.0, 115.0, 105.0, 111.0, 100.0)
    card = result.card
    assert card.source == "binance" and card.interval == timedelta(days=1)
    assert card.symbols == ["BTCUSDT", "ETHUSDT"]
    assert [p.member for p in card.provenance][:2] == ["BTCUSDT-1d-2024-01.csv", "BTCUSDT-1d-2024-02.csv"]
    assert all(p.sha256 == hashlib.sha256(dumps.files[p.uri]).hexdigest() for p in card.provenance)


def test_milliseconds_and_2025_microseconds_are_both_read(tmp_path):
    dumps = FakeDumps()
    dumps.publish("BTCUSDT", date(2024, 12, 1), kline_zip("BTCUSDT", "1d", date(2024, 12, 1), unit="ms"))
    dumps.publish("BTCUSDT", date(2025, 1, 1), kline_zip("BTCUSDT", "1d", date(2025, 1, 1), unit="us"))
    panel = load_panel(fetch(dumps, tmp_path, start=date(2024, 12, 1), end=date(2025, 1, 31)).path)
    expected = pl.datetime_range(
        datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 31, tzinfo=UTC), "1d", time_unit="us", eager=True
    )
    assert panel.get_column("timestamp").to_list() == expected.to_list()


def test_a_header_line_is_tolerated(tmp_path):
    dumps = FakeDumps()
    dumps.publish("BTCUSDT", date(2024, 1, 1), kline_zip("BTCUSDT", "1d", date(2024, 1, 1), header=True))
    assert fetch(dumps, tmp_path, end=date(2024, 1, 31)).card.rows == 31


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path):
    dumps = FakeDumps()
    good = kline_zip("BTCUSDT", "1d", date(2024, 1, 1))
    url = dumps.publish("BTCUSDT", date(2024, 1, 1), good[:-10] + b"corrupted!", checksum_of=good)
    with pytest.raises(SourceError, match=rf"{url}: downloaded bytes have sha256 [0-9a-f]{{64}} but its CHECKSUM says"):
        fetch(dumps, tmp_path, end=date(2024, 1, 31))
    assert not (tmp_path / "out.parquet").exists()
    assert not list((tmp_path / "cache").rglob("*.zip*"))


def test_an_interrupted_fetch_resumes_without_downloading_verified_months_again(tmp_path):
    dumps = FakeDumps()
    jan = dumps.publish("BTCUSDT", date(2024, 1, 1), kline_zip("BTCUSDT", "1d", date(2024, 1, 1)))
    feb = dumps.publish("BTCUSDT", date(2024, 2, 1), kline_zip("BTCUSDT", "1d", date(2024, 2, 1)))
    dumps.broken.add(feb)
    with pytest.raises(SourceError, match=r"connection reset by peer.*months already downloaded are kept"):
        fetch(dumps, tmp_path)
    assert not (tmp_path / "out.parquet").exists()

    dumps.broken.clear()
    dumps.requests.clear()
    result = fetch(dumps, tmp_path)
    assert dumps.requests == [feb + ".CHECKSUM", feb]  # January was verified in the cache
    assert result.card.rows == 31 + 29

    dumps.requests.clear()
    fetch(dumps, tmp_path)
    assert dumps.requests == []
    fetch(dumps, tmp_path, force=True)
    assert dumps.requests == [jan + ".CHECKSUM", jan, feb + ".CHECKSUM", feb]


def test_a_partial_download_is_never_taken_for_a_complete_one(tmp_path):
    dumps = FakeDumps()
    url = dumps.publish("BTCUSDT", date(2024, 1, 1), kline_zip("BTCUSDT", "1d", date(2024, 1, 1)))
    cached = tmp_path / "cache" / "binance" / "BTCUSDT" / "1d" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(dumps.files[url][:100])  # cut short, beside the real checksum
    cached.with_name(cached.name + ".CHECKSUM").write_bytes(dumps.files[url + ".CHECKSUM"])
    result = fetch(dumps, tmp_path, end=date(2024, 1, 31))
    assert url in dumps.requests and result.card.rows == 31
    assert cached.read_bytes() == dumps.files[url]


def test_unpublished_months_are_noted_and_unknown_symbols_refused(tmp_path):
    dumps = FakeDumps()
    dumps.publish("BTCUSDT", date(2024, 2, 1), kline_zip("BTCUSDT", "1d", date(2024, 2, 1)))
    card = fetch(dumps, tmp_path).card  # January is not published (listed in February)
    assert any(note.startswith("BTCUSDT 2024-01: no dump published") for note in card.notes)
    with pytest.raises(SourceError, match=r"no 1d klines for BTCUSD in 2024-01..2024-02 .*check the symbol"):
        fetch(dumps, tmp_path, symbols=("BTCUSD",))


def test_bad_arguments(tmp_path):
    with pytest.raises(SourceError, match="unknown Binance interval '2x'"):
        fetch_binance(["BTCUSDT"], "2x", date(2024, 1, 1), date(2024, 1, 2), tmp_path / "x.parquet")
    with pytest.raises(SourceError, match="is after end"):
        fetch_binance(["BTCUSDT"], "1d", date(2024, 2, 1), date(2024, 1, 1), tmp_path / "x.parquet")
