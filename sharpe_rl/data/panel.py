"""The OHLCV panel: the one data shape every part of sharpe-rl reads, and the checks it must pass.

A panel is a polars DataFrame in long format, one row per (bar, symbol), sorted by
`(timestamp, symbol)`:

    timestamp                        Datetime("us", "UTC"), the bar's open time
    symbol                           String, e.g. BTCUSDT
    open, high, low, close, volume   Float64, volume in base units

Every reward is a Sharpe ratio computed on these bars, so `load_panel` refuses anything that
would make one meaningless: missing or non-numeric columns, empty values, timestamps without a
time zone, duplicate bars, non-positive prices, bars whose low/high do not bracket their
open/close, negative volume, and symbols on different bar intervals. Gaps and symbols that list
or delist mid-panel are normal markets, not errors; the data card reports them.

A bad input raises `PanelError` naming the file, the column and the first offending row. Row
numbers count data rows from 1 in the file's own order (a CSV's header is not a row, so row N
is on line N + 1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from sharpe_rl.data.atomic import atomic_path, sha256_file
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS

if TYPE_CHECKING:
    from sharpe_rl.data.card import DataCard

PANEL_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.Datetime("us", "UTC"),
    "symbol": pl.String(),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}
PANEL_COLUMNS: tuple[str, ...] = tuple(PANEL_SCHEMA)
PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")

# The original (1-based, file-order) row number, carried through validation for error messages.
_ROW = "__row"
_FIX_ROW = "fix or drop this row at the source"


class PanelError(ValueError):
    """The input is not a valid panel; the message names the file, the column and the first offending row."""


def load_panel(path: str | Path, *, assume_utc: bool = False) -> pl.DataFrame:
    """Read a Parquet or CSV panel and validate it (see the module docstring); raise `PanelError` if it is bad.

    `assume_utc` declares that timestamps without a time zone are UTC; without it they are refused.
    """
    path = Path(path)
    return validate_panel(read_table(path), source=str(path), assume_utc=assume_utc)


def read_table(path: Path) -> pl.DataFrame:
    """Read a Parquet or CSV file as stored; a CSV is read as text and parsed by `validate_panel`."""
    if not path.is_file():
        raise PanelError(f"{path}: no such file; check the path, or fetch a dataset with `sharpe-rl data fetch`")
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Path], pl.DataFrame]] = {
        ".parquet": pl.read_parquet,
        ".csv": lambda p: pl.read_csv(p, infer_schema=False),
    }
    if suffix not in readers:
        raise PanelError(f"{path}: unsupported file type {suffix!r}; store the panel as .parquet or .csv")
    try:
        return readers[suffix](path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise PanelError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from exc


def validate_panel(
    frame: pl.DataFrame, *, source: str, assume_utc: bool = False, check_interval: bool = True
) -> pl.DataFrame:
    """Check `frame` and return it as a panel: the panel columns only, cast, sorted by (timestamp, symbol).

    `source` names the input in error messages. `check_interval=False` skips the bar-interval checks,
    for a fragment (one month of one symbol) that is checked again once assembled.
    """
    missing = [column for column in PANEL_COLUMNS if column not in frame.columns]
    if missing:
        raise PanelError(
            f"{source}: column '{missing[0]}': missing (columns missing: {', '.join(missing)}; found: "
            f"{', '.join(frame.columns) or 'none'}); a panel needs {', '.join(PANEL_COLUMNS)}"
        )
    rows = frame.select(PANEL_COLUMNS).with_row_index(_ROW, offset=1)
    if rows.height == 0:
        raise PanelError(f"{source}: no rows; a panel needs at least one bar")
    _reject_empty_values(rows, source)
    rows = rows.with_columns(_utc_timestamps(rows, source, assume_utc=assume_utc), _symbols(rows, source))
    rows = rows.with_columns(*(_numbers(rows, column, source) for column in OHLCV_COLUMNS))
    _check_values(rows, source)
    rows = rows.sort("timestamp", "symbol", _ROW)
    _reject_duplicates(rows, source)
    if check_interval:
        _check_grid(rows, detect_interval(rows, source=source), source)
    return rows.drop(_ROW)


def detect_interval(panel: pl.DataFrame, *, source: str = "panel") -> timedelta:
    """The bar interval: the most common positive step between a symbol's consecutive bars.

    Every symbol must have the same one; a symbol with a single bar has no step and does not vote.
    `panel` must be sorted by timestamp, as every panel is.
    """
    rows = _numbered(panel)
    steps = rows.with_columns(step=pl.col("timestamp").diff().over("symbol"))
    per_symbol = (
        steps.filter(pl.col("step") > timedelta(0))
        .group_by("symbol", "step")
        .len()
        .sort("len", "step", descending=[True, False])
        .group_by("symbol")
        .agg(interval=pl.col("step").first(), bars=pl.col("len").sum() + 1)
    )
    if per_symbol.height == 0:
        raise PanelError(
            f"{source}: column 'timestamp': cannot detect the bar interval: no symbol has two bars; "
            "a panel needs at least two bars of one symbol"
        )
    votes = per_symbol.group_by("interval").agg(pl.col("bars").sum(), pl.len().alias("symbols"))
    if votes.height == 1:
        return votes.item(0, "interval")
    majority = votes.sort("bars", "interval", descending=[True, False]).row(0, named=True)
    panel_interval = majority["interval"]
    odd = per_symbol.filter(pl.col("interval") != panel_interval)
    first = steps.join(odd, on="symbol").filter(pl.col("step") == pl.col("interval")).sort(_ROW).row(0, named=True)
    raise PanelError(
        f"{source}: column 'timestamp': {_where(rows, first[_ROW])}: {first['symbol']} has "
        f"{format_interval(first['interval'])} bars but {majority['symbols']} other symbol(s) have "
        f"{format_interval(panel_interval)} bars; a panel holds one bar interval — split the file by interval"
    )


def write_panel(panel: pl.DataFrame, path: Path, card: DataCard) -> DataCard:
    """Write a validated panel as Parquet with its card beside it, atomically; return the card as written.

    The returned card carries the sha256 of the Parquet bytes written. Either both files are
    replaced or, if anything fails, neither is touched.
    """
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"{path}: panels are written as Parquet; give a path ending in .parquet")
    if panel.schema != pl.Schema(PANEL_SCHEMA):
        raise ValueError(f"not a panel (schema {dict(panel.schema)}); build it with validate_panel first")
    with atomic_path(path) as temporary:
        panel.write_parquet(temporary, compression="zstd")
        written = card.model_copy(update={"checksum": sha256_file(temporary)})
        written.save(path)
    return written


def format_interval(interval: timedelta) -> str:
    """A bar interval the way traders write it: 1d, 4h, 15m, 1d8h."""
    seconds = int(interval.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or f"{interval.total_seconds()}s"


def format_time(value: Any) -> str:
    """A timestamp for messages, in UTC when it has a time zone (naive ones are shown as they are)."""
    if isinstance(value, datetime):
        pattern = "%Y-%m-%d %H:%M" if value.second == value.microsecond == 0 else "%Y-%m-%d %H:%M:%S.%f"
        if value.tzinfo is None:
            return value.strftime(pattern)
        return value.astimezone(UTC).strftime(pattern) + " UTC"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _numbered(panel: pl.DataFrame) -> pl.DataFrame:
    return panel if _ROW in panel.columns else panel.with_row_index(_ROW, offset=1)


def _where(rows: pl.DataFrame, row: int) -> str:
    record = rows.filter(pl.col(_ROW) == row).row(0, named=True)
    return f"row {row} ({format_time(record['timestamp'])}, {record['symbol']})"


def _first_row(rows: pl.DataFrame, offending: pl.Expr) -> int | None:
    return rows.filter(offending).get_column(_ROW).min()


def _reject_empty_values(rows: pl.DataFrame, source: str) -> None:
    empty = {column: row for column in PANEL_COLUMNS if (row := _first_row(rows, pl.col(column).is_null())) is not None}
    if empty:
        column = min(empty, key=lambda name: empty[name])
        raise PanelError(
            f"{source}: column '{column}': {_where(rows, empty[column])}: empty value; every bar needs "
            f"{', '.join(PANEL_COLUMNS)} — {_FIX_ROW}"
        )


def _utc_timestamps(rows: pl.DataFrame, source: str, *, assume_utc: bool) -> pl.Series:
    timestamps = rows.get_column("timestamp")
    dtype = timestamps.dtype
    if dtype == pl.String:
        # The format is inferred from the values; ISO-8601 with an offset ('Z', '+00:00') parses to UTC.
        parsed = timestamps.str.strip_chars().str.to_datetime(time_unit="us", strict=False)
        bad = _first_row(rows, parsed.is_null())
        if bad is not None:
            raise PanelError(
                f"{source}: column 'timestamp': {_where(rows, bad)}: {timestamps[bad - 1]!r} is not a timestamp "
                "like the others; write ISO-8601 with an offset, e.g. 2020-01-03T00:00:00Z"
            )
        timestamps = parsed
    elif dtype == pl.Date:
        timestamps = timestamps.cast(pl.Datetime("us"))
    elif not isinstance(dtype, pl.Datetime):
        hint = " (integer epochs are ambiguous: seconds, ms or µs?)" if dtype.is_integer() else ""
        raise PanelError(
            f"{source}: column 'timestamp': dtype {dtype} cannot be read as a timestamp{hint}; "
            "store UTC datetimes, or ISO-8601 text with an offset"
        )
    time_zone = timestamps.dtype.time_zone  # type: ignore[attr-defined]
    if time_zone is None:
        if not assume_utc:
            raise PanelError(
                f"{source}: column 'timestamp': {_where(rows.with_columns(timestamps), 1)}: timestamps have no "
                "time zone; store them in UTC (ISO-8601 with 'Z' or '+00:00'), or declare them UTC with "
                "--assume-utc if they are"
            )
        timestamps = timestamps.dt.replace_time_zone("UTC")
    elif time_zone != "UTC":
        timestamps = timestamps.dt.convert_time_zone("UTC")
    return timestamps.dt.cast_time_unit("us").alias("timestamp")


def _symbols(rows: pl.DataFrame, source: str) -> pl.Series:
    symbols = rows.get_column("symbol")
    if symbols.dtype not in (pl.String, pl.Categorical) and not isinstance(symbols.dtype, pl.Enum):
        raise PanelError(
            f"{source}: column 'symbol': dtype {symbols.dtype} is not text; store symbols as strings, e.g. BTCUSDT"
        )
    symbols = symbols.cast(pl.String)
    blank = _first_row(rows, symbols.str.strip_chars() == "")
    if blank is not None:
        raise PanelError(f"{source}: column 'symbol': {_where(rows, blank)}: blank symbol — {_FIX_ROW}")
    return symbols


def _numbers(rows: pl.DataFrame, column: str, source: str) -> pl.Series:
    values = rows.get_column(column)
    if values.dtype == pl.String:
        parsed = values.str.strip_chars().cast(pl.Float64, strict=False)
        bad = _first_row(rows, parsed.is_null())
        if bad is not None:
            raise PanelError(f"{source}: column '{column}': {_where(rows, bad)}: {values[bad - 1]!r} is not a number")
        return parsed
    if not values.dtype.is_numeric():
        raise PanelError(
            f"{source}: column '{column}': dtype {values.dtype} cannot be cast to Float64; "
            "store prices and volumes as numbers"
        )
    return values.cast(pl.Float64)


def _check_values(rows: pl.DataFrame, source: str) -> None:
    # (column, offending rows, message template filled from the offending bar)
    checks: list[tuple[str, pl.Expr, str]] = [
        *((c, ~pl.col(c).is_finite(), f"{c} {{{c}!r}} is not a finite number") for c in OHLCV_COLUMNS),
        *((c, pl.col(c) <= 0, f"{c} {{{c}!r}} is not positive; prices must be > 0") for c in PRICE_COLUMNS),
        ("low", pl.col("low") > pl.col("body_low"), "low {low!r} is above min(open, close) {body_low!r}"),
        ("high", pl.col("high") < pl.col("body_high"), "high {high!r} is below max(open, close) {body_high!r}"),
        ("volume", pl.col("volume") < 0, "volume {volume!r} is negative"),
    ]
    bars = rows.with_columns(body_low=pl.min_horizontal("open", "close"), body_high=pl.max_horizontal("open", "close"))
    for column, offending, message in checks:
        row = _first_row(bars, offending)
        if row is not None:
            bar = bars.filter(pl.col(_ROW) == row).row(0, named=True)
            raise PanelError(f"{source}: column '{column}': {_where(rows, row)}: {message.format(**bar)} — {_FIX_ROW}")


def _reject_duplicates(rows: pl.DataFrame, source: str) -> None:
    """`rows` sorted by (timestamp, symbol, row): a repeated bar follows the one it repeats."""
    repeat = (pl.col("timestamp") == pl.col("timestamp").shift()) & (pl.col("symbol") == pl.col("symbol").shift())
    row = _first_row(rows, repeat)
    if row is not None:
        bar = rows.filter(pl.col(_ROW) == row).row(0, named=True)
        same_bar = (pl.col("timestamp") == bar["timestamp"]) & (pl.col("symbol") == bar["symbol"])
        raise PanelError(
            f"{source}: columns 'timestamp', 'symbol': {_where(rows, row)}: duplicate of row "
            f"{_first_row(rows, same_bar)}; keep one bar per (timestamp, symbol)"
        )


def _check_grid(rows: pl.DataFrame, interval: timedelta, source: str) -> None:
    """Every bar opens on one grid of `interval` steps, so bar counts and horizons mean the same for all symbols."""
    step_us = interval // timedelta(microseconds=1)
    phase = pl.col("timestamp").dt.epoch("us") % step_us
    usual = rows.select(phase.mode().min()).item()
    row = _first_row(rows, phase != usual)
    if row is not None:
        offset = rows.filter(pl.col(_ROW) == row).select((phase - usual) % step_us).item()
        raise PanelError(
            f"{source}: column 'timestamp': {_where(rows, row)}: bar opens "
            f"{format_interval(timedelta(microseconds=offset))} off the {format_interval(interval)} grid the other "
            "bars open on; every bar must open on one grid — resample the file to one bar interval"
        )
