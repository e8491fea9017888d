"""What a sandbox run may see: a panel cut at a point in time, written as NumPy arrays.

A view is `panel.npz` with `timestamp` (int64 ns UTC), `symbol` (fixed-width unicode) and the
OHLCV columns (float64), so the image needs no Parquet library. It is stored under the cache
directory by the hash of its arrays (identical data is written once and shares cache entries) and
mounted read-only, alone, into the sandbox: other views (the holdout among them) stay invisible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from sharpe_rl.data.atomic import atomic_path
from sharpe_rl.data.splits import Fold
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS


@dataclass(frozen=True)
class DataView:
    """A panel (the rows the sandbox sees), its npz file and its content hash."""

    panel: pl.DataFrame
    path: Path
    data_hash: str

    def test_rows(self, folds: list[Fold]) -> pl.DataFrame:
        """The rows a run over `folds` must predict: (timestamp, symbol, fold), in canonical order."""
        parts = [
            self.panel.filter(pl.col("timestamp").is_between(fold.test_start, fold.test_end))
            .select("timestamp", "symbol")
            .with_columns(fold=pl.lit(fold.index, pl.Int32))
            for fold in folds
        ]
        return pl.concat(parts).sort("fold", "timestamp", "symbol")


def write_view(panel: pl.DataFrame, end: datetime | None, directory: Path) -> DataView:
    """The view of `panel` up to and including `end` (all of it when None), written once."""
    rows = panel if end is None else panel.filter(pl.col("timestamp") <= end)
    rows = rows.select("timestamp", "symbol", *OHLCV_COLUMNS).sort("timestamp", "symbol")
    arrays = {
        "timestamp": rows.get_column("timestamp").dt.epoch("ns").to_numpy().astype("<i8"),
        "symbol": np.array(rows.get_column("symbol").to_list(), dtype=str),
        **{name: rows.get_column(name).to_numpy().astype("<f8") for name in OHLCV_COLUMNS},
    }
    digest = hashlib.sha256()
    for name, array in arrays.items():
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    data_hash = digest.hexdigest()[:16]
    path = directory.resolve() / f"{data_hash}.npz"
    if not path.is_file():
        with atomic_path(path) as temporary, temporary.open("wb") as handle:
            np.savez(handle, **arrays)
    return DataView(panel=rows, path=path, data_hash=data_hash)
