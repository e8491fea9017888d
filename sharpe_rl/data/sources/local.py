"""The `file` source: your own Parquet or CSV, validated and written as a panel with its card."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sharpe_rl.data.atomic import sha256_file
from sharpe_rl.data.card import DataCard, Provenance
from sharpe_rl.data.panel import PANEL_COLUMNS, read_table, validate_panel, write_panel
from sharpe_rl.data.sources.base import FetchedPanel

UNKNOWN_LICENCE = "unknown (supplied by the user)"


def import_file(
    path: Path,
    out: Path,
    *,
    licence: str = UNKNOWN_LICENCE,
    provenance: str | None = None,
    assume_utc: bool = False,
) -> FetchedPanel:
    """Validate `path` and write it to `out` as a Parquet panel with a card.

    `provenance` says where the data came from (default: the file's absolute path); `assume_utc`
    declares timestamps without a time zone to be UTC.
    """
    raw = read_table(path)
    panel = validate_panel(raw, source=str(path), assume_utc=assume_utc)
    notes = []
    dropped = [column for column in raw.columns if column not in PANEL_COLUMNS]
    if dropped:
        notes.append(f"columns that are not part of a panel were dropped: {', '.join(dropped)}")
    stored = raw.schema["timestamp"]
    if isinstance(stored, pl.Datetime) and stored.time_zone not in (None, "UTC"):
        notes.append(f"timestamps were converted from {stored.time_zone} to UTC")
    if assume_utc:
        notes.append("timestamps without a time zone were declared UTC by the user (--assume-utc)")
    card = DataCard.describe(
        panel,
        source="file",
        provenance=[Provenance(uri=provenance or str(path.resolve()), sha256=sha256_file(path))],
        licence=licence,
        notes=notes,
    )
    return FetchedPanel(out, write_panel(panel, out, card), reused=False)
