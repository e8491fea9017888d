"""What every source returns and raises, and how it reports progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sharpe_rl.data.card import DataCard

#: Progress callback: (what is happening, steps done, steps in total). The CLI draws it with Rich.
ProgressFn = Callable[[str, int, int], None]


def no_progress(message: str, done: int, total: int) -> None:
    """The default progress callback: report nothing."""


@dataclass(frozen=True)
class FetchedPanel:
    """A panel file a source produced, its card, and whether it was already up to date."""

    path: Path
    card: DataCard
    reused: bool


class SourceError(RuntimeError):
    """A source could not produce its panel (download failed, checksum mismatch, unexpected archive)."""
