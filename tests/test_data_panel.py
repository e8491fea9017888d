"""The panel loader: every bad input gets a message naming file, column and row; nothing is half-written."""

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from data_fixtures import START, bars, set_cell, write_csv

from sharpe_rl.data import (
    PANEL_SCHEMA,
    DataCard,
    PanelError,
    card_path,
    detect_interval,
    load_panel,
    verified_card,
    write_panel,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_error(frame: pl.DataFrame, path: Path, **options) -> str:
    frame.write_parquet(path) if path.suffix == ".parquet" else write_csv(frame, path)
    with pytest.raises(PanelError) as caught:
        load_panel(path, **options)
    return str(caught.value)


# --- valid input ---------------------------------------------------------------------------------


def test_a_valid_csv_loads_as_a_sorted_typed_panel(tmp_path):
    shuffled = bars().sample(fraction=1.0, shuffle=True, seed=1)
    panel = load_panel(write_csv(shuffled, tmp_path / "x.csv"))
    assert panel.schema == pl.Schema(PANEL_SCHEMA)
    assert panel.equals(bars())
    assert detect_interval(panel) == timedelta(hours=1)


def test_castable_numbers_and_other_time_zones_are_accepted(tmp_path):
    frame = bars().with_columns(
        pl.col("volume").cast(pl.Int64),
        pl.col("open").cast(pl.Float32),
        pl.col("timestamp").dt.convert_time_zone("Asia/Tokyo").dt.cast_time_unit("ns"),
        pl.col("symbol").cast(pl.Categorical),
    )
    frame.write_parquet(tmp_path / "x.parquet")
    panel = load_panel(tmp_path / "x.parquet")
    assert panel.schema == pl.Schema(PANEL_SCHEMA)
    assert panel.get_column("timestamp").min() == START  # converted back to UTC, same instant


def test_extra_columns_are_dropped(tmp_path):
    write_csv(bars().with_columns(quote_volume=pl.lit(5.0)), tmp_path / "x.csv")
    assert load_panel(tmp_path / "x.csv").columns == list(PANEL_SCHEMA)


def test_naive_timestamps_load_when_declared_utc(tmp_path):
    naive = bars().with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    naive.write_parquet(tmp_path / "x.parquet")
    assert load_panel(tmp_path / "x.parquet", assume_utc=True).equals(bars())


# --- each bad input gets its message ---------------------------------------------------------------


def test_the_message_names_file_column_and_first_offending_row(tmp_path):
    # 2 symbols per hour from 16:00: row 17 is BTCUSDT at 2020-01-03 00:00 (the 9th hour)
    frame = set_cell(set_cell(bars(), 17, "low", 9100.0), 17, "open", 9050.0)
    frame = set_cell(set_cell(frame, 17, "close", 9200.0), 17, "high", 9300.0)
    frame = set_cell(set_cell(frame, 19, "low", 9999.0), 19, "high", 10000.0)  # a later offender is not named
    path = tmp_path / "x.csv"
    assert load_error(frame, path) == (
        f"{path}: column 'low': row 17 (2020-01-03 00:00 UTC, BTCUSDT): low 9100.0 is above min(open, close) 9050.0"
        " — fix or drop this row at the source"
    )


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("open", 0.0, "column 'open': row 5 (2020-01-02 18:00 UTC, BTCUSDT): open 0.0 is not positive"),
        ("close", -1.0, "column 'close': row 5 (2020-01-02 18:00 UTC, BTCUSDT): close -1.0 is not positive"),
        ("high", 101.0, "column 'high': row 5 (2020-01-02 18:00 UTC, BTCUSDT): high 101.0 is below max(open, close)"),
        ("low", float("nan"), "column 'low': row 5 (2020-01-02 18:00 UTC, BTCUSDT): low nan is not a finite number"),
        ("volume", -2.0, "column 'volume': row 5 (2020-01-02 18:00 UTC, BTCUSDT): volume -2.0 is negative"),
    ],
)  # fmt: skip
def test_bad_values(tmp_path, column, value, expected):
    path = tmp_path / "x.parquet"
    assert load_error(set_cell(bars(), 5, column, value), path).startswith(f"{path}: {expected}")


def test_missing_column(tmp_path):
    message = load_error(bars().drop("low"), tmp_path / "x.csv")
    assert message.startswith(f"{tmp_path / 'x.csv'}: column 'low': missing")
    assert "found: timestamp, symbol, open, high, close, volume" in message


def test_text_that_is_not_a_number(tmp_path):
    frame = set_cell(bars().with_columns(pl.col("volume").cast(pl.String)), 3, "volume", "1,5")
    message = load_error(frame, tmp_path / "x.csv")
    assert "column 'volume': row 3 (2020-01-02 17:00 UTC, BTCUSDT): '1,5' is not a number" in message


def test_a_dtype_that_cannot_be_cast(tmp_path):
    frame = bars().with_columns(pl.col("close") > 0)
    assert "column 'close': dtype Boolean cannot be cast to Float64" in load_error(frame, tmp_path / "x.parquet")


def test_integer_timestamps_are_refused_as_ambiguous(tmp_path):
    frame = bars().with_columns(pl.col("timestamp").dt.epoch("ms"))
    message = load_error(frame, tmp_path / "x.parquet")
    assert "column 'timestamp': dtype Int64 cannot be read as a timestamp (integer epochs are ambiguous" in message


def test_naive_timestamps_are_refused(tmp_path):
    path = tmp_path / "x.csv"
    bars().with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv(path)
    with pytest.raises(PanelError) as caught:
        load_panel(path)
    assert str(caught.value).startswith(
        f"{path}: column 'timestamp': row 1 (2020-01-02 16:00, BTCUSDT): timestamps have no time zone"
    )
    assert "--assume-utc" in str(caught.value)


def test_unparseable_timestamp(tmp_path):
    path = tmp_path / "x.csv"
    write_csv(bars(), path)
    path.write_text(path.read_text().replace("2020-01-02T19:00:00Z", "yesterday", 1))
    with pytest.raises(PanelError, match=r"column 'timestamp': row 7 \(yesterday, BTCUSDT\): 'yesterday' is not a"):
        load_panel(path)


def test_duplicate_bars(tmp_path):
    frame = set_cell(bars(), 4, "symbol", "BTCUSDT")  # row 4 (17:00, ETHUSDT) becomes a second 17:00 BTCUSDT
    message = load_error(frame, tmp_path / "x.parquet")
    assert "columns 'timestamp', 'symbol': row 4 (2020-01-02 17:00 UTC, BTCUSDT): duplicate of row 3" in message


def test_empty_values(tmp_path):
    path = tmp_path / "x.csv"
    write_csv(set_cell(bars(), 6, "close", None), path)
    with pytest.raises(PanelError, match=r"column 'close': row 6 \(2020-01-02T18:00:00Z, ETHUSDT\): empty value"):
        load_panel(path)


def test_mixed_intervals_across_symbols(tmp_path):
    frame = pl.concat([bars(("BTCUSDT",), n=24), bars(("ETHUSDT",), n=6, step=timedelta(hours=4))])
    message = load_error(frame, tmp_path / "x.parquet")
    assert "column 'timestamp': row 26 (2020-01-02 20:00 UTC, ETHUSDT): ETHUSDT has 4h bars but 1 other symbol(s) " in (
        message
    )
    assert "have 1h bars; a panel holds one bar interval" in message


def test_bars_off_the_grid(tmp_path):
    frame = pl.concat([bars(("BTCUSDT",)), bars(("ETHUSDT",), start=START + timedelta(minutes=30), n=1)])
    message = load_error(frame, tmp_path / "x.parquet")
    assert "row 13 (2020-01-02 16:30 UTC, ETHUSDT): bar opens 30m off the 1h grid" in message


def test_one_bar_has_no_interval(tmp_path):
    assert "cannot detect the bar interval" in load_error(bars(n=1), tmp_path / "x.parquet")


def test_unreadable_inputs(tmp_path):
    with pytest.raises(PanelError, match="no such file"):
        load_panel(tmp_path / "absent.parquet")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(PanelError, match=r"unsupported file type '\.json'; store the panel as \.parquet or \.csv"):
        load_panel(tmp_path / "x.json")
    (tmp_path / "x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PanelError, match="cannot be read as parquet"):
        load_panel(tmp_path / "x.parquet")
    (tmp_path / "x.csv").write_text(",".join(PANEL_SCHEMA) + "\n")
    with pytest.raises(PanelError, match="no rows"):
        load_panel(tmp_path / "x.csv")


# --- the card: gaps and listings are reported, not fatal ----------------------------------------------


def test_gaps_listings_and_delistings_are_reported(tmp_path):
    btc = bars(("BTCUSDT",), n=10).filter(~pl.col("timestamp").is_in([START + timedelta(hours=h) for h in (4, 5, 8)]))
    eth = bars(("ETHUSDT",), n=7, start=START + timedelta(hours=3))  # lists at hour 3
    sol = bars(("SOLUSDT",), n=6).with_columns(volume=pl.lit(0.0))  # stops at hour 5
    write_csv(pl.concat([btc, eth, sol]), tmp_path / "x.csv")
    panel = load_panel(tmp_path / "x.csv")
    card = DataCard.describe(panel, source="file", provenance=[], licence="test")
    stats = {s.symbol: s for s in card.per_symbol}
    assert (stats["BTCUSDT"].gaps, stats["BTCUSDT"].missing_bars, stats["BTCUSDT"].bars) == (2, 3, 7)
    assert (stats["ETHUSDT"].gaps, stats["ETHUSDT"].first_bar) == (0, START + timedelta(hours=3))
    assert stats["SOLUSDT"].zero_volume_bars == 6
    assert [s.symbol for s in card.listed_late] == ["ETHUSDT"]
    assert [s.symbol for s in card.ended_early] == ["SOLUSDT"]
    assert (card.start, card.end, card.interval, card.rows) == (
        START,
        START + timedelta(hours=9),
        timedelta(hours=1),
        20,
    )


# --- writing: atomic, with a checksummed card ---------------------------------------------------------


def test_write_panel_writes_panel_and_card_with_checksum(tmp_path):
    path = tmp_path / "p.parquet"
    card = write_panel(bars(), path, DataCard.describe(bars(), source="file", provenance=[], licence="test"))
    assert card_path(path) == tmp_path / "p.parquet.card.json"
    assert verified_card(path) == (card, "card verified against the file's sha256")
    assert load_panel(path).equals(bars())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.parquet", "p.parquet.card.json"]


def test_a_failed_write_leaves_the_old_files_and_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "p.parquet"
    write_panel(bars(), path, DataCard.describe(bars(), source="file", provenance=[], licence="old"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(self, panel_path):
        raise OSError("No space left on device")

    monkeypatch.setattr(DataCard, "save", disk_full)
    new = bars(n=20)
    with pytest.raises(OSError, match=r"(?i)no space"):
        write_panel(new, path, DataCard.describe(new, source="file", provenance=[], licence="new"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_edited_panel_makes_its_card_stale(tmp_path):
    path = tmp_path / "p.parquet"
    write_panel(bars(), path, DataCard.describe(bars(), source="file", provenance=[], licence="test"))
    bars(n=3).write_parquet(path)
    card, reason = verified_card(path)
    assert card is None and "is stale" in reason


# --- real data ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared real-data folder is not beside the checkout")
@pytest.mark.parametrize(
    ("name", "interval", "rows"),
    [
        ("binance_spot_1d.parquet", timedelta(days=1), 50_846),
        ("binance_spot_4h.parquet", timedelta(hours=4), 291_479),
        ("binance_spot_1h_2024.parquet", timedelta(hours=1), 755_566),
    ],
)
def test_real_panels_validate_and_their_interval_is_detected(name, interval, rows):
    panel = load_panel(SHARED_DATA / name)
    assert panel.height == rows and panel.schema == pl.Schema(PANEL_SCHEMA)
    assert detect_interval(panel) == interval
    card = DataCard.describe(panel, source="file", provenance=[], licence="see the folder's README")
    assert card.listed_late  # symbols list mid-panel in every real file
