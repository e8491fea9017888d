"""Spot klines from Binance's public data dumps (data.binance.vision), for users with internet.

Each month of one symbol and interval is a zip,
`https://data.binance.vision/data/spot/monthly/klines/<SYMBOL>/<INTERVAL>/<SYMBOL>-<INTERVAL>-<YYYY>-<MM>.zip`,
published with `<same>.zip.CHECKSUM` holding `<sha256>  <zip name>`. The zip holds one CSV
without header, 12 columns (`KLINE_COLUMNS`). `open_time` is in milliseconds in older files and
in microseconds in files from 2025 on; each value is read by its magnitude, so both mix freely.

Downloads resume: each month is kept in the cache (`<cache>/binance/<SYMBOL>/<INTERVAL>/`) beside
its CHECKSUM file, and counts as downloaded only when the zip's sha256 matches that checksum.
Files are written atomically (zip first, checksum last), so an interrupted download leaves
nothing that passes for a complete one.

Monthly dumps exist only for months that have ended. Months before a symbol listed (or after it
delisted) do not exist; they are skipped and named in the card.
"""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

from sharpe_rl.data.atomic import sha256_file, write_bytes_atomic
from sharpe_rl.data.card import DataCard, Provenance
from sharpe_rl.data.panel import format_interval, validate_panel, write_panel
from sharpe_rl.data.sources.base import FetchedPanel, ProgressFn, SourceError, no_progress
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS

BASE_URL = "https://data.binance.vision/data/spot/monthly/klines"
KLINE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "ignore",
)  # fmt: skip
INTERVALS: dict[str, timedelta] = {
    "1s": timedelta(seconds=1),
    "1m": timedelta(minutes=1),
    "3m": timedelta(minutes=3),
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "2h": timedelta(hours=2),
    "4h": timedelta(hours=4),
    "6h": timedelta(hours=6),
    "8h": timedelta(hours=8),
    "12h": timedelta(hours=12),
    "1d": timedelta(days=1),
    "3d": timedelta(days=3),
    "1w": timedelta(weeks=1),
}
LICENCE = "Binance market data (data.binance.vision) under Binance's Terms of Use; no separate licence is published"
# Epochs at or above this are microseconds: in milliseconds it would be the year 5138.
_MICROSECONDS_FROM = 10**14

#: Fetches a URL's bytes; raises FileNotFoundError when the file does not exist (HTTP 404).
Fetcher = Callable[[str], bytes]


def http_get(url: str) -> bytes:
    """GET `url` with urllib; HTTP 404 becomes FileNotFoundError."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(url) from exc
        raise


def month_url(symbol: str, interval: str, month: date) -> str:
    """The URL of one month's kline zip."""
    return f"{BASE_URL}/{symbol}/{interval}/{symbol}-{interval}-{month:%Y-%m}.zip"


def fetch_binance(
    symbols: Sequence[str],
    interval: str,
    start: date,
    end: date,
    out: Path,
    *,
    cache_dir: Path = Path("data/cache"),
    force: bool = False,
    fetch: Fetcher = http_get,
    progress: ProgressFn = no_progress,
) -> FetchedPanel:
    """Download (or reuse) the monthly klines of `symbols` covering `start..end` (inclusive days) into a panel.

    `force` downloads months again even when the cache holds them verified.
    """
    if interval not in INTERVALS:
        raise SourceError(f"unknown Binance interval {interval!r}; use one of {', '.join(INTERVALS)}")
    if start > end:
        raise SourceError(f"start {start} is after end {end}")
    symbols = list(dict.fromkeys(symbol.strip().upper() for symbol in symbols))
    if not symbols:
        raise SourceError("no symbols given; name Binance spot pairs, e.g. BTCUSDT ETHUSDT")
    months = _months(start, end)
    total = len(symbols) * len(months)
    frames: list[pl.DataFrame] = []
    provenance: list[Provenance] = []
    found: set[str] = set()
    notes = [f"requested {', '.join(symbols)} {interval} bars from {start} to {end} (inclusive, UTC days)."]
    for position, (symbol, month) in enumerate((symbol, month) for symbol in symbols for month in months):
        url = month_url(symbol, interval, month)
        progress(f"{symbol} {interval} {month:%Y-%m}", position, total)
        zip_path = cache_dir / "binance" / symbol / interval / url.rsplit("/", 1)[1]
        digest = _download_month(url, zip_path, fetch=fetch, force=force)
        if digest is None:
            notes.append(f"{symbol} {month:%Y-%m}: no dump published (before listing, after delisting, or not over).")
            continue
        member, frame = read_klines(zip_path, symbol)
        frames.append(frame)
        found.add(symbol)
        provenance.append(Provenance(uri=url, sha256=digest, member=member))
    progress("assembling the panel", total, total)
    absent = [symbol for symbol in symbols if symbol not in found]
    if absent:
        raise SourceError(
            f"no {interval} klines for {', '.join(absent)} in {months[0]:%Y-%m}..{months[-1]:%Y-%m} "
            f"(tried {month_url(absent[0], interval, months[0])}); check the symbol (e.g. BTCUSDT) and the dates"
        )
    first_day = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
    after_last_day = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    span = pl.concat(frames).filter(pl.col("timestamp").is_between(first_day, after_last_day, closed="left"))
    panel = validate_panel(span, source=f"binance {interval} klines of {', '.join(symbols)}")
    card = DataCard.describe(panel, source="binance", provenance=provenance, licence=LICENCE, notes=notes)
    if card.interval != INTERVALS[interval]:
        raise SourceError(f"asked for {interval} klines but the files hold {format_interval(card.interval)} bars")
    return FetchedPanel(out, write_panel(panel, out, card), reused=False)


def read_klines(zip_path: Path, symbol: str) -> tuple[str, pl.DataFrame]:
    """The CSV inside one kline zip, as panel rows of `symbol` (validated, one month need not be a full grid)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = [name for name in archive.namelist() if name.endswith(".csv")]
            if len(members) != 1:
                raise SourceError(f"{zip_path}: expected one CSV inside, found {members}")
            content = archive.read(members[0])
    except zipfile.BadZipFile as exc:
        raise SourceError(f"{zip_path}: not a zip ({exc}); delete it and fetch again") from exc
    source = f"{zip_path}:{members[0]}"
    raw = pl.read_csv(io.BytesIO(content), has_header=False, new_columns=list(KLINE_COLUMNS), infer_schema=False)
    if raw.height and not raw.item(0, "open_time").strip().isdigit():
        raw = raw.slice(1)  # a header line, which some dumps carry
    try:
        open_time = pl.col("open_time").str.strip_chars().cast(pl.Int64)
        microseconds = pl.when(open_time >= _MICROSECONDS_FROM).then(open_time).otherwise(open_time * 1000)
        frame = raw.select(
            pl.from_epoch(microseconds, time_unit="us").dt.replace_time_zone("UTC").alias("timestamp"),
            pl.lit(symbol).alias("symbol"),
            *OHLCV_COLUMNS,
        )
    except pl.exceptions.InvalidOperationError as exc:
        raise SourceError(f"{source}: column 'open_time': {exc}") from exc
    return members[0], validate_panel(frame, source=source, check_interval=False)


def _download_month(url: str, zip_path: Path, *, fetch: Fetcher, force: bool) -> str | None:
    """The verified sha256 of the month's zip, downloaded unless the cache holds it verified; None if unpublished."""
    checksum_path = zip_path.with_name(zip_path.name + ".CHECKSUM")
    if not force and zip_path.is_file() and checksum_path.is_file():
        recorded = _parse_checksum(checksum_path.read_text(), zip_path.name)
        if recorded is not None and sha256_file(zip_path) == recorded:
            return recorded
    try:
        checksum_text = _get(url + ".CHECKSUM", fetch).decode()
    except FileNotFoundError:
        return None
    expected = _parse_checksum(checksum_text, zip_path.name)
    if expected is None:
        raise SourceError(f"{url}.CHECKSUM: expected '<sha256>  {zip_path.name}', found {checksum_text[:120]!r}")
    try:
        content = _get(url, fetch)
    except FileNotFoundError as exc:
        raise SourceError(f"{url}: its CHECKSUM is published but the zip is not; try again later") from exc
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise SourceError(
            f"{url}: downloaded bytes have sha256 {actual} but its CHECKSUM says {expected}; the download was "
            "corrupted and not kept. Run the command again (months already verified are not downloaded again)."
        )
    write_bytes_atomic(zip_path, content)
    write_bytes_atomic(checksum_path, checksum_text.encode())
    return expected


def _get(url: str, fetch: Fetcher) -> bytes:
    try:
        return fetch(url)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SourceError(
            f"could not download {url}: {exc}. Check your connection and run the command again; "
            "months already downloaded are kept."
        ) from exc


def _parse_checksum(text: str, zip_name: str) -> str | None:
    """The sha256 in a `<sha256>  <zip name>` line, or None if the text is not one."""
    fields = text.split()
    if len(fields) != 2 or fields[1] != zip_name or len(fields[0]) != 64:
        return None
    return fields[0].lower()


def _months(start: date, end: date) -> list[date]:
    months, month = [], start.replace(day=1)
    while month <= end:
        months.append(month)
        month = (month + timedelta(days=32)).replace(day=1)
    return months
