"""The quality-diversity archive (MAP-Elites): the best experiment of each cell, kept beside the buffer.

Every scored experiment occupies one cell of the (model family × feature building block) grid
per block its features use (`Classification.cells`). The archive keeps, per cell, the experiment
with the highest net Sharpe on the reward window (ties: the earlier one, by cycle then index).
That rule makes `EliteArchive.add` a fold whose result depends neither on the order of the
experiences nor on seeing one twice, so a resumed run that logs a cycle again leaves the archive
as it was, and `EliteArchive.from_frame` (a rebuild from the replay buffer) gives the same
elites as adding the cycles one by one.

Persisted per run at `runs/elites/<run>.json`, written to a temporary file, flushed and renamed
(`save_archive`), so a reader sees the archive after some whole cycle, never half of one; a
missing file is an empty archive. `reset_runs` moves the folder to `runs/elites-archive/`.

Measures (per cycle in `sharpe_rl.analysis.quality_diversity`):

- **coverage**: the share of the grid's `len(GRID_CELLS)` cells that hold an elite;
- **QD score** (Pugh et al. 2016): the sum over filled cells of the elite's fitness made
  non-negative, `qd_fitness(sharpe) = (clip(sharpe, ±3) + 3) / 6` ∈ [0, 1], so it grows both
  when a new cell is filled and when a cell's elite improves, and is at most the cell count.

`EliteArchive.inspiration` draws a few elites of other cells for a prompt that shows them
(`v6_inspiration`, `render_prompt(..., elites=...)`).
"""

from __future__ import annotations

import os
import random
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

import polars as pl
from pydantic import BaseModel, ConfigDict

from sharpe_rl.classify import classify_spec_json
from sharpe_rl.data.atomic import atomic_path
from sharpe_rl.experience import Experience
from sharpe_rl.grid import GRID_CELLS, Cell

#: Net Sharpe ratios are clipped to ±this before they count in the QD score.
QD_SHARPE_CLIP = 3.0


def qd_fitness(sharpe_net: float) -> float:
    """A cell's contribution to the QD score: the clipped net Sharpe mapped to [0, 1]."""
    clipped = min(max(sharpe_net, -QD_SHARPE_CLIP), QD_SHARPE_CLIP)
    return (clipped + QD_SHARPE_CLIP) / (2 * QD_SHARPE_CLIP)


class Elite(BaseModel):
    """The experiment that holds one cell."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_family: str
    block: str
    run: str
    cycle: int
    index: int
    name: str | None
    code_hash: str | None
    sharpe_net: float
    spec_json: str

    @property
    def cell(self) -> Cell:
        return (self.model_family, self.block)

    @property
    def rank(self) -> tuple[float, int, int]:
        """Higher is better: the net Sharpe, then the earlier find."""
        return (self.sharpe_net, -self.cycle, -self.index)


def candidates(
    spec_json: str, sharpe_net: float, *, run: str, cycle: int, index: int, name: str | None, code_hash: str | None
) -> list[Elite]:
    """One would-be elite per cell a scored experiment occupies."""
    return [
        Elite(
            model_family=family,
            block=block,
            run=run,
            cycle=cycle,
            index=index,
            name=name,
            code_hash=code_hash,
            sharpe_net=sharpe_net,
            spec_json=spec_json,
        )
        for family, block in classify_spec_json(spec_json).cells
    ]


def experience_candidates(experiences: Iterable[Experience]) -> Iterator[Elite]:
    """The would-be elites of the experiences that ran and were scored."""
    for e in experiences:
        sharpe = e.metrics.get("sharpe_net")
        if e.error_class is None and e.spec_json is not None and sharpe is not None:
            yield from candidates(
                e.spec_json, sharpe, run=e.run, cycle=e.cycle, index=e.index, name=e.name, code_hash=e.code_hash
            )


def frame_candidates(frame: pl.DataFrame) -> Iterator[Elite]:
    """The would-be elites of the scored rows of a replay-buffer frame (`ReplayBuffer.frame()`)."""
    if "metric_sharpe_net" not in frame.columns:
        return
    scored = frame.filter(
        pl.col("error_class").is_null() & pl.col("spec_json").is_not_null() & pl.col("metric_sharpe_net").is_not_null()
    )
    columns = ("run", "cycle", "index", "name", "code_hash", "spec_json", "metric_sharpe_net")
    for run, cycle, index, name, code_hash, spec_json, sharpe in scored.select(columns).iter_rows():
        yield from candidates(spec_json, sharpe, run=run, cycle=cycle, index=index, name=name, code_hash=code_hash)


class EliteArchive(BaseModel):
    """The elites of one run, by cell, and the cycles folded in."""

    model_config = ConfigDict(extra="forbid")

    run: str
    cycles: list[int] = []
    elites: list[Elite] = []  # in GRID_CELLS order

    def elite(self, cell: Cell) -> Elite | None:
        return next((e for e in self.elites if e.cell == cell), None)

    def offer(self, candidate: Elite) -> bool:
        """Keep `candidate` if it beats its cell's elite; True if it did."""
        if candidate.run != self.run:
            raise ValueError(f"experiment of run {candidate.run!r} offered to the archive of run {self.run!r}")
        by_cell = {e.cell: e for e in self.elites}
        current = by_cell.get(candidate.cell)
        if current is not None and candidate.rank <= current.rank:
            return False
        by_cell[candidate.cell] = candidate
        order = {cell: position for position, cell in enumerate(GRID_CELLS)}
        self.elites = sorted(by_cell.values(), key=lambda e: order.get(e.cell, len(order)))
        return True

    def add(self, cycle: int, experiences: Iterable[Experience]) -> list[Cell]:
        """Fold one cycle's experiences in; returns the cells whose elite changed."""
        improved = [c.cell for c in experience_candidates(experiences) if self.offer(c)]
        self.cycles = sorted({*self.cycles, cycle})
        return list(dict.fromkeys(improved))

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, run: str) -> EliteArchive:
        """The archive of `run` rebuilt from the replay buffer's frame."""
        mine = frame.filter(pl.col("run") == run)
        archive = cls(run=run, cycles=sorted(mine["cycle"].unique().to_list()))
        for candidate in frame_candidates(mine):
            archive.offer(candidate)
        return archive

    @property
    def coverage(self) -> float:
        """Share of the grid's cells that hold an elite, in [0, 1]."""
        return len(self.elites) / len(GRID_CELLS)

    @property
    def qd_score(self) -> float:
        """Σ qd_fitness(elite Sharpe) over the filled cells."""
        return sum(qd_fitness(e.sharpe_net) for e in self.elites)

    def inspiration(self, k: int, seed: int, avoid: Collection[Cell] = (), min_sharpe: float = 0.0) -> list[Elite]:
        """Up to `k` elites for a prompt: distinct programs from distinct cells outside `avoid`.

        Cells are drawn uniformly, so a rarely visited cell is as likely as a crowded one; only
        elites with a net Sharpe above `min_sharpe` (experiments that made money) qualify.
        Seeded, so a repeated cycle draws the same.
        """
        pool = [e for e in self.elites if e.cell not in avoid and e.sharpe_net > min_sharpe]
        random.Random(seed).shuffle(pool)
        chosen: dict[str, Elite] = {}
        for elite in pool:
            chosen.setdefault(elite.code_hash or elite.spec_json, elite)
            if len(chosen) == k:
                break
        return list(chosen.values())


def archive_path(runs_dir: Path, run: str) -> Path:
    if not run or Path(run).name != run or run.startswith("."):
        raise ValueError(f"run name {run!r} must be a plain file name")
    return Path(runs_dir) / "elites" / f"{run}.json"


def load_archive(runs_dir: Path, run: str) -> EliteArchive:
    """The stored archive of `run`, or an empty one."""
    path = archive_path(runs_dir, run)
    if not path.exists():
        return EliteArchive(run=run)
    return EliteArchive.model_validate_json(path.read_text(encoding="utf-8"))


def save_archive(runs_dir: Path, archive: EliteArchive) -> Path:
    """Store the archive atomically, replacing the previous one."""
    destination = archive_path(runs_dir, archive.run)
    with atomic_path(destination) as temporary, temporary.open("w", encoding="utf-8") as handle:
        handle.write(archive.model_dump_json(indent=1))
        handle.flush()
        os.fsync(handle.fileno())  # durable before it becomes visible
    return destination
