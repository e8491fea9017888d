"""What a sandbox run may see: a panel cut at a point in time, as the arrays of a task.

A view holds the bars up to `end` (sorted by time, then symbol) as arrays — timestamps (int64 ns
UTC), symbol codes (int32, indexes into the sorted symbol list) and OHLCV (float64, n x 5) — and
their content hash. The arrays travel to the sandbox on its stdin, inside the task
(`contract.encode_task`), in disguise (`disguise.py`); nothing is written to disk or mounted. The
symbols' names stay on the host.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from sharpe_rl.data.splits import Fold, fold_rows
from sharpe_rl.sandbox.contract import OHLCV_COLUMNS


@dataclass(frozen=True)
class DataView:
    """A panel (the rows the sandbox sees), the same rows as arrays, and their content hash."""

    panel: pl.DataFrame
    symbols: list[str]
    timestamps: np.ndarray = field(repr=False)  # int64 ns UTC
    codes: np.ndarray = field(repr=False)  # int32 index into `symbols`
    ohlcv: np.ndarray = field(repr=False)  # float64 (n, 5)
    data_hash: str

    def test_rows(self, folds: list[Fold]) -> pl.DataFrame:
        """The rows a run over `folds` predicts, in the order the sandbox answers: (timestamp, symbol, fold)."""
        return fold_rows(self.panel, folds)

    def test_indices(self, folds: list[Fold]) -> np.ndarray:
        """The positions of `test_rows(folds)` among the view's rows."""
        wire = [fold.to_wire() for fold in folds]
        return np.concatenate(
            [np.flatnonzero((self.timestamps >= f["test_start"]) & (self.timestamps <= f["test_end"])) for f in wire]
        )


def make_view(panel: pl.DataFrame, end: datetime | None) -> DataView:
    """The view of `panel` up to and including `end` (all of it when None)."""
    rows = panel if end is None else panel.filter(pl.col("timestamp") <= end)
    rows = rows.select("timestamp", "symbol", *OHLCV_COLUMNS).sort("timestamp", "symbol")
    symbols = rows.get_column("symbol").unique().sort().to_list()
    codes = rows.get_column("symbol").replace_strict(symbols, list(range(len(symbols))), return_dtype=pl.Int32)
    arrays = {
        "timestamp": rows.get_column("timestamp").dt.epoch("ns").to_numpy().astype("<i8"),
        "symbol": codes.to_numpy().astype("<i4"),
        "ohlcv": np.ascontiguousarray(rows.select(OHLCV_COLUMNS).to_numpy(), dtype="<f8"),
    }
    digest = hashlib.sha256()
    for name, values in arrays.items():
        raw = values.tobytes()
        digest.update(f"{name}:{values.dtype.str}:{len(raw)}".encode())
        digest.update(raw)
    digest.update("\0".join(symbols).encode())
    return DataView(
        panel=rows,
        symbols=symbols,
        timestamps=arrays["timestamp"],
        codes=arrays["symbol"],
        ohlcv=arrays["ohlcv"],
        data_hash=digest.hexdigest()[:16],
    )
