"""The data card: what a panel holds, where it came from, under which licence, and how complete it is.

A card is stored beside its panel as `<panel file name>.card.json` (e.g.
`data/sample_daily.parquet.card.json`). It carries the sha256 of the panel's bytes, so a card
that no longer describes its file (the file was replaced or edited) is detected rather than
believed.

Per symbol it reports the first and last bar (listings and delistings mid-panel are normal) and
the bars missing between them: `gaps` counts the holes, `missing_bars` the bars they swallow.
`zero_volume_bars` counts bars with no trades, which some providers fill with the previous price;
they make returns look calmer than the market was.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sharpe_rl.data.atomic import sha256_file, write_bytes_atomic
from sharpe_rl.data.panel import detect_interval

SourceName = Literal["sample", "binance", "file"]


class Provenance(BaseModel):
    """One input the panel was built from: a URL or path, its sha256, and the file used inside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str
    sha256: str | None = None
    member: str | None = Field(None, description="The file inside the archive that was read.")


class SymbolStats(BaseModel):
    """How complete one symbol's series is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: str
    first_bar: datetime
    last_bar: datetime
    bars: int
    gaps: int = Field(description="Holes in the series: steps longer than one bar interval.")
    missing_bars: int = Field(description="Bars absent between the first and the last bar.")
    zero_volume_bars: int = Field(description="Bars with no trades.")


class DataCard(BaseModel):
    """Provenance, licence, span and completeness of one panel file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceName
    provenance: list[Provenance]
    licence: str
    created_at: datetime
    start: datetime = Field(description="Open time of the first bar.")
    end: datetime = Field(description="Open time of the last bar.")
    interval: timedelta
    symbols: list[str]
    rows: int
    per_symbol: list[SymbolStats]
    checksum: str | None = Field(None, description="sha256 of the panel file's bytes, set when the panel is written.")
    notes: list[str] = Field(default_factory=list, description="How the source was normalised, and what to know.")

    @classmethod
    def describe(
        cls,
        panel: pl.DataFrame,
        *,
        source: SourceName,
        provenance: Sequence[Provenance],
        licence: str,
        notes: Sequence[str] = (),
    ) -> DataCard:
        """The card of a validated panel (without checksum until `write_panel` writes it)."""
        interval = detect_interval(panel)
        interval_us = interval // timedelta(microseconds=1)
        steps_in_bars = pl.col("timestamp").diff().dt.total_microseconds() // interval_us
        stats = (
            panel.group_by("symbol")
            .agg(
                first_bar=pl.col("timestamp").first(),
                last_bar=pl.col("timestamp").last(),
                bars=pl.len(),
                gaps=(steps_in_bars > 1).sum(),
                missing_bars=(steps_in_bars - 1).clip(lower_bound=0).sum(),
                zero_volume_bars=(pl.col("volume") == 0).sum(),
            )
            .sort("symbol")
        )
        return cls(
            source=source,
            provenance=list(provenance),
            licence=licence,
            created_at=datetime.now(UTC),
            start=panel.get_column("timestamp").min(),
            end=panel.get_column("timestamp").max(),
            interval=interval,
            symbols=stats.get_column("symbol").to_list(),
            rows=panel.height,
            per_symbol=[SymbolStats(**row) for row in stats.iter_rows(named=True)],
            notes=list(notes),
        )

    @property
    def listed_late(self) -> list[SymbolStats]:
        """Symbols whose first bar comes after the panel's start (listed mid-panel)."""
        return [stats for stats in self.per_symbol if stats.first_bar > self.start]

    @property
    def ended_early(self) -> list[SymbolStats]:
        """Symbols whose last bar comes before the panel's end (delisted, or the source stops early)."""
        return [stats for stats in self.per_symbol if stats.last_bar < self.end]

    def save(self, panel_path: Path) -> None:
        """Write this card beside `panel_path`, atomically."""
        write_bytes_atomic(card_path(panel_path), (self.model_dump_json(indent=2) + "\n").encode())


def card_path(panel_path: Path) -> Path:
    """Where the card of `panel_path` lives: `<panel file name>.card.json` in the same folder."""
    return panel_path.with_name(panel_path.name + ".card.json")


def verified_card(panel_path: Path) -> tuple[DataCard | None, str]:
    """The card beside `panel_path` if it exists, parses and matches the file's bytes; else None and why not."""
    path = card_path(panel_path)
    if not path.is_file() or not panel_path.is_file():
        return None, f"no data card beside {panel_path}"
    try:
        card = DataCard.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        return None, f"{path} is not a valid data card ({exc.error_count()} error(s))"
    if card.checksum != sha256_file(panel_path):
        return None, f"{path} is stale: {panel_path} changed after the card was written"
    return card, "card verified against the file's sha256"


def card_for_file(panel_path: Path, panel: pl.DataFrame) -> tuple[DataCard, bool]:
    """The card of a validated panel file: the verified one beside it, else one computed from the panel.

    Returns the card and whether it was verified. A computed card says in its notes why there was
    no usable card; its licence is unknown.
    """
    card, status = verified_card(panel_path)
    if card is not None:
        return card, True
    checksum = sha256_file(panel_path)
    computed = DataCard.describe(
        panel,
        source="file",
        provenance=[Provenance(uri=str(panel_path.resolve()), sha256=checksum)],
        licence="unknown (no data card)",
        notes=[f"{status}; this card was computed from the file."],
    )
    return computed.model_copy(update={"checksum": checksum}), False
